"""lowbit.serve: the OpenAI-compatible HTTP server over the serving engine (`lowbit serve ARTIFACT`)."""
