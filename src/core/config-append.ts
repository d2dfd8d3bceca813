// Appends one rule to a config file's text for `porthole forward add --save` (and takes one
// out for `forward remove --save`), touching nothing else: the user's comments, order, quoting and indentation stay as they were (a
// YAML library re-printing the whole file would not keep them). The result is parsed again
// and must give the old rules plus exactly the new one, else the edit is refused. No I/O.
import { isMap, isScalar, isSeq, parseDocument } from "yaml";
import { parseConfig } from "./config.ts";
import type { Rule } from "./rules.ts";

function portForwardsOf(text: string, file: string) {
  const doc = parseDocument(text);
  if (doc.contents !== null && !isMap(doc.contents)) throw new Error(`${file} is not a mapping of keys to values`);
  return isMap(doc.contents) ? doc.contents.items.find((p) => isScalar(p.key) && p.key.value === "portForwards") : undefined;
}

/** The text without the first rule equal to `expected`, or throws (not there, or not safely removable). */
export function removeRule(text: string, expected: Rule, file: string): string {
  const before = parseConfig(text, file);
  const index = before.rules.findIndex((r) => JSON.stringify(r) === JSON.stringify(expected));
  if (index < 0) throw new Error(`${file} has no such rule`);
  const value = portForwardsOf(text, file)?.value;
  if (!isSeq(value)) throw new Error(`portForwards in ${file} is not a list`);
  const item = value.items[index] as { range?: [number, number, number] };
  const next = value.items[index + 1] as { range?: [number, number, number] } | undefined;
  let cut: [number, number];
  if (value.flow) {
    const prev = value.items[index - 1] as { range?: [number, number, number] } | undefined;
    cut = prev ? [prev.range![1], item.range![1]] : [item.range![0], next ? next.range![0] : item.range![1]];
  } else {
    // The whole lines of a block item: from its dash's line to the end of its last line.
    const dash = text.lastIndexOf("-", item.range![0]);
    const start = text.lastIndexOf("\n", dash) + 1;
    const endAt = text.indexOf("\n", Math.max(item.range![1] - 1, dash));
    cut = [start, endAt === -1 ? text.length : endAt + 1];
  }
  const result = text.slice(0, cut[0]) + text.slice(cut[1]);
  const after = parseConfig(result, file);
  const wanted = before.rules.filter((_, i) => i !== index);
  if (JSON.stringify(after.rules) !== JSON.stringify(wanted)) throw new Error(`removing the rule from ${file} would change more than that rule`);
  return result;
}

/** The new text, or throws with why the file cannot be edited safely. */
export function appendRule(text: string, ruleLine: string, expected: Rule, file: string): string {
  const before = parseConfig(text, file); // a file that does not parse is not edited
  const pair = portForwardsOf(text, file);
  const value = pair?.value;
  let next: string;
  if (!pair) {
    const sep = text === "" || text.endsWith("\n") ? "" : "\n";
    next = `${text}${sep}portForwards:\n- ${ruleLine}\n`;
  } else if (isSeq(value) && value.flow) {
    // `portForwards: [...]`: the new rule goes before the closing bracket.
    const close = text.lastIndexOf("]", value.range![1]);
    if (close < value.range![0]) throw new Error(`cannot find the end of portForwards in ${file}`);
    next = `${text.slice(0, close)}${value.items.length ? ", " : ""}${ruleLine}${text.slice(close)}`;
  } else if (isSeq(value) && value.items.length) {
    // A block list: a new `- ` line after its last item, at the column of its first dash.
    const first = value.items[0] as { range?: [number, number, number] };
    const dash = text.lastIndexOf("-", first.range![0]);
    const indent = dash - (text.lastIndexOf("\n", dash) + 1);
    const end = value.range![1];
    const lineEnd = text[end - 1] === "\n" ? end : text.indexOf("\n", end);
    const at = lineEnd === -1 ? text.length : lineEnd === end && text[end - 1] === "\n" ? end : lineEnd + 1;
    const lead = at === text.length && !text.endsWith("\n") ? "\n" : "";
    next = `${text.slice(0, at)}${lead}${" ".repeat(indent)}- ${ruleLine}\n${text.slice(at)}`;
  } else if (isScalar(value) && (value.value === null || value.value === undefined)) {
    // `portForwards:` with nothing (or null, ~) after it.
    const [start, end] = value.range!;
    next = `${text.slice(0, start)}${start === end ? " " : ""}[${ruleLine}]${text.slice(end)}`;
  } else {
    throw new Error(`portForwards in ${file} is not a list`);
  }
  const after = parseConfig(next, file);
  const same = JSON.stringify([...before.rules, expected]) === JSON.stringify(after.rules);
  if (!same) throw new Error(`appending to ${file} would change more than the one new rule`);
  return next;
}
