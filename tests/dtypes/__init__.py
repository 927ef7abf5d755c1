"""Tests for lowbit.dtypes (mirror its modules)."""
