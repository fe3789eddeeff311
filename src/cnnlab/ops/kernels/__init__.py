"""The fast routes of the ops: compiled loops (csrc/, built and loaded by compiled.py, wrapped by compiled_*.py),
the DFT, the window matrix, the per-tap and pointwise products, and the tensor passes of pooling and batch
norm. Each computes its op's definition (``ops/textbook``), which is all it imports of cnnlab."""
