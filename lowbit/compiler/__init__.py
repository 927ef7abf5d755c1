"""`lowbit compile`: model.yaml -> serving artifact (phases in compile.py), and loading it back (load.py)."""

from lowbit.compiler.compile import CompileResult, compile_model
from lowbit.compiler.load import CompiledModel, load_compiled

__all__ = ["CompileResult", "CompiledModel", "compile_model", "load_compiled"]
