"""lowbit's tile IR: programs, statements, instructions, values and layouts."""
