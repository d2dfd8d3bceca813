// `forward add --save`: one rule appended to the user's file, every other byte kept, in
// each shape portForwards can have; a file that cannot be edited safely is refused.
import { expect, test } from "bun:test";
import { appendRule, removeRule } from "../../src/core/config-append.ts";
import { ruleYaml, runtimeRule } from "../../src/core/runtime-forward.ts";

const f = { protocol: "tcp" as const, guestIP: "127.0.0.1", guestPort: 8080, hostIP: "127.0.0.2", hostPort: 18080 };
const line = ruleYaml(f);
const append = (text: string) => appendRule(text, line, runtimeRule(f), "c.yaml");

test("a block list gets a new item at its own indentation, before what follows it", () => {
  expect(append("portForwards:\n- guestPort: 1\n  hostPort: 2\n# trailing\nother: 1\n")).toBe(`portForwards:\n- guestPort: 1\n  hostPort: 2\n- ${line}\n# trailing\nother: 1\n`);
  expect(append("a: 1 # x\nportForwards:\n    - {guestPort: 1}\n    - guestPort: 3 # c\n")).toBe(`a: 1 # x\nportForwards:\n    - {guestPort: 1}\n    - guestPort: 3 # c\n    - ${line}\n`);
  expect(append("portForwards:\n  - guestPort: 3")).toBe(`portForwards:\n  - guestPort: 3\n  - ${line}\n`);
});

test("a flow list, an empty key and a missing key", () => {
  expect(append("portForwards: [{guestPort: 1}]\nb: 2\n")).toBe(`portForwards: [{guestPort: 1}, ${line}]\nb: 2\n`);
  expect(append("portForwards: []\n")).toBe(`portForwards: [${line}]\n`);
  expect(append("portForwards:\nb: 1\n")).toBe(`portForwards: [${line}]\nb: 1\n`);
  expect(append("# just a comment\nvmType: qemu")).toBe(`# just a comment\nvmType: qemu\nportForwards:\n- ${line}\n`);
  expect(append("")).toBe(`portForwards:\n- ${line}\n`);
});

test("a file that is not valid, or not a mapping, is refused", () => {
  expect(() => append("portForwards: [\n")).toThrow("not valid YAML");
  expect(() => append("portForwards: 3\n")).toThrow();
  expect(() => append("- a\n- b\n")).toThrow();
});

test("removing a saved rule takes out its lines (or its flow item) and nothing else", () => {
  const remove = (text: string) => removeRule(text, runtimeRule(f), "c.yaml");
  const block = "# top\nportForwards:\n- guestPort: 1 # one\n  hostPort: 2\n";
  expect(remove(append(block))).toBe(block);
  expect(remove(`portForwards:\n  - ${line}   # saved\n  - guestPort: 3\nb: 1\n`)).toBe("portForwards:\n  - guestPort: 3\nb: 1\n");
  expect(remove(`portForwards: [{guestPort: 1}, ${line}]\n`)).toBe("portForwards: [{guestPort: 1}]\n");
  expect(remove(`portForwards: [${line}, {guestPort: 1}]\n`)).toBe("portForwards: [{guestPort: 1}]\n");
  expect(remove(`portForwards: [${line}]\n`)).toBe("portForwards: []\n");
  expect(() => remove(block)).toThrow("c.yaml has no such rule");
});
