"""The definitions the book gives, in plain tensor operations: shapes, windows, the reference forms of
every op (which the double backward, torch.func and forward-mode AD use), memory layouts and reused memory.
Imports nothing else of cnnlab."""
