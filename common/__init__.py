"""Pure, batched tensor library shared by every model family (see ALGORITHM.md)."""
