"""Interactive annotation sessions: prompts in, mask deltas out, with undo/redo and a memory budget."""
