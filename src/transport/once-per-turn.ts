// Work that gathers what one turn of the event loop produced (datagrams, delivery counts) and
// goes out once after it: one write or one message per turn, not one per item.

/** A function that asks for `run` once after the current turn, however often it is called before. */
export function oncePerTurn(run: () => void): () => void {
  let scheduled = false;
  return () => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      run();
    });
  };
}
