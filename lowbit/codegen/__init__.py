"""Code generation: the NumPy reference interpreter (ground truth) and, in later issues, Triton and TVM."""
