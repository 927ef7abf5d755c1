"""`lowbit serve ARTIFACT`: the OpenAI-compatible server (flags mirror vLLM's; see lowbit/serve/README.md).

    lowbit serve artifacts/tiny-llama --port 8000 --max-num-seqs 16
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "tiny-llama", "prompt": "Hello", "max_tokens": 8}'

SIGTERM / Ctrl-C: stop accepting, give in-flight requests --shutdown-timeout seconds, abort the rest, close
the engine.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lowbit.serve.config import CHOICES, ServeConfig, resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    # every default is None: resolve() fills in the config file's value, then ServeConfig's default
    d = ServeConfig()
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("artifact", nargs="?", help="the compiled artifact directory (lowbit compile)")
    p.add_argument("--config", help="YAML file with the same keys as these flags (the command line wins)")
    p.add_argument("--host", help=f"bind address (default {d.host}; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, help=f"default {d.port}")
    p.add_argument("--served-model-name", help="the model name clients send (default: the artifact's model.name)")
    p.add_argument("--max-num-seqs", type=int, help="sequences in a batch (default: the artifact's)")
    p.add_argument("--max-model-len", type=int, help="longest prompt + completion (default: the artifact's)")
    p.add_argument("--max-num-batched-tokens", type=int, help="token budget of one step (default 512)")
    p.add_argument("--kv-cache-bytes", type=int, help="KV cache memory budget (default: what max_num_seqs needs)")
    p.add_argument("--max-waiting", type=int, help=f"queued requests before answering 429 (default {d.max_waiting})")
    p.add_argument("--schedule", choices=CHOICES["schedule"], help="unsplit | nano batches | the artifact's plan")
    p.add_argument("--plan", help="a pipeline plan JSON (`lowbit plan ARTIFACT --write-plan FILE`) to run instead of "
                   "the artifact's plan.json")  # fmt: skip
    p.add_argument("--research-every", type=int, help="steps between re-searches of the artifact's split plan when the "
                   "served mix drifts (default 64; 0: never)")  # fmt: skip
    p.add_argument("--policy", choices=CHOICES["policy"], help="admission order (priority: the request's priority)")
    p.add_argument("--backend", help="override target.backend (tvm | triton | reference)")
    p.add_argument("--verify", choices=CHOICES["verify"], help="artifact check at load (default full sha256)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` (default: $LOWBIT_API_KEY, else none)")
    p.add_argument("--chat-template", help="a jinja2 chat template file (default: the artifact's tokenizer_config)")
    p.add_argument("--shutdown-timeout", type=float, help=f"seconds in-flight requests get on shutdown "
                   f"(default {d.shutdown_timeout:g})")  # fmt: skip
    p.add_argument("--log-level", choices=CHOICES["log_level"], help=f"default {d.log_level}")


def main(args: argparse.Namespace) -> int:
    """Load the engine, serve until SIGTERM / Ctrl-C."""
    try:
        cfg = resolve(args)
    except (OSError, ValueError) as e:
        print(f"lowbit serve: {e}", file=sys.stderr)
        return 2
    level = cfg.log_level.upper() if cfg.log_level != "trace" else "DEBUG"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from lowbit.artifact.manifest import ArtifactError
    from lowbit.runtime.async_engine import AsyncLLMEngine
    from lowbit.runtime.engine import LLMEngine
    from lowbit.serve.app import build_app
    from lowbit.serve.chat import load_chat_template

    assert cfg.artifact is not None  # resolve() refuses a config without one
    try:
        engine = AsyncLLMEngine(LLMEngine(cfg.artifact, **cfg.engine_kwargs()), max_waiting=cfg.max_waiting)
    except (ArtifactError, OSError, ValueError) as e:  # no artifact, refused, impossible settings
        print(f"lowbit serve: {e}", file=sys.stderr)
        return 2
    app = build_app(
        engine,
        cfg.served_model_name,
        api_key=cfg.api_key or os.environ.get("LOWBIT_API_KEY") or None,
        chat_template=load_chat_template(cfg.artifact, cfg.chat_template),
        manage_engine=True,
        shutdown_timeout=cfg.shutdown_timeout,
    )
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=int(cfg.shutdown_timeout),
        log_config=None,  # keep the logging set up above
    )  # fmt: skip
    uvicorn.Server(config).run()
    return 0


__all__ = ["add_arguments", "main"]
