"""Search the catalogue from the command line, in the latest materialized `product_index`.

    python -m wb_pipeline.search "женские зимние ботинки" --top 10
    python -m wb_pipeline.search --image photo.jpg --top 10

Prints `nm<TAB>score<TAB>title` lines, best first (score = cosine similarity in the index's space).
A text query goes through the text encoder with its QUERY prompt (e5: `query: `) and, for the joint
spaces, the joint model's text head; a photo through the image encoder and the image head.

Reads `<storage>/assets/product_index.parquet` (storage: `--storage`, else `WB_PIPELINE_STORAGE_DIR`,
else `storage/`), which names the index build folder. The encoders are the code location's
(`wb_pipeline.definitions.build_definitions()`); their fingerprints must match the ones the index
was built from, so a query is never encoded by another model than the products.
Exit status: 0 results printed, 1 nothing to search (no index materialized, or it is unusable),
2 a bad query (empty text, unreadable image, a modality the index's space cannot take).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from wb_pipeline import settings
from wb_pipeline.cli_args import int_at_least

INDEX_ASSET = "product_index"  # its value (the build folder) is where the storage IO manager keeps it


class NotMaterialized(RuntimeError):
    """No usable index under the storage dir."""


def latest_index_folder(storage_dir: str) -> str:
    """The build folder named by the latest materialized `product_index` under `storage_dir`."""
    from wb_pipeline.core.data import storage
    from wb_pipeline.core.data.ingestion import one_line

    path = storage.StorageLayout(storage_dir).asset_file(INDEX_ASSET)
    if not path.exists():
        raise NotMaterialized(
            f"no product index materialized under {storage_dir} (no {path}): materialize the "
            "`search` group first, e.g. `make run` or `dagster job execute -m wb_pipeline.definitions -j full_pipeline`"
        )
    try:
        table = storage.read_parquet(path, columns=["index_folder"])
    except (
        OSError,
        ValueError,
    ) as error:  # a folder, FIFO or garbage in place of the table (ArrowInvalid is a ValueError)
        raise NotMaterialized(
            f"{path} is not a readable product index table ({one_line(error)}): re-materialize the `search` group"
        ) from None
    if "index_folder" not in table.columns:
        raise NotMaterialized(
            f"{path} has no 'index_folder' column: not a product index table; re-materialize the `search` group"
        )
    folders = table["index_folder"].dropna().unique()
    if len(folders) != 1:
        raise NotMaterialized(f"{path}: expected one index folder, found {len(folders)}: {list(folders)[:3]}")
    return str(folders[0])


def open_searcher(
    storage_dir: str | None = None,
    models_dir: str | None = None,
    need: str = "text",
    threads: int = 1,
    ef_search: int | None = None,
    definitions=None,
    nprobe: int | None = None,
):
    """A `Searcher` over the latest build, with the encoder a `need` ("text" / "image" / "both") query uses."""
    from wb_pipeline.core.data.images import ImageConfig
    from wb_pipeline.core.data.ingestion import one_line
    from wb_pipeline.core.models.contrastive import load_joint_model
    from wb_pipeline.core.search.query import Searcher
    from wb_pipeline.core.search.spaces import uses_joint_model
    from wb_pipeline.core.search.store import load_build

    storage_dir = storage_dir or settings.storage_dir()
    folder = latest_index_folder(storage_dir)
    try:
        build = load_build(folder, ef_search, nprobe)
    except (OSError, ValueError, RuntimeError) as error:  # RuntimeError: faiss refusing a corrupt index file
        raise NotMaterialized(f"the materialized product index is not usable: {one_line(error)}") from error
    manifest = build.manifest
    joint_model = None
    if uses_joint_model(manifest["space"]):
        try:
            joint_model, _ = load_joint_model(manifest["joint_model"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise NotMaterialized(
                f"the index's joint model {manifest.get('joint_model')!r} cannot be loaded: {error}"
            ) from error
    if definitions is None:
        definitions = _definitions_for(storage_dir, models_dir)
    resources = definitions.resources
    text_encoder = image_encoder = None
    recorded = manifest.get("encoders") or {}
    if need in ("text", "both"):
        resource = resources["text_encoder"]
        product_side = resource.build()  # the fingerprint needs no model load
        if recorded.get("text") not in (None, "unknown") and product_side.fingerprint != recorded["text"]:
            raise NotMaterialized(
                f"the index was built from text vectors of encoder {recorded['text'][:12]}…, but the configured text "
                f"encoder is {product_side.fingerprint[:12]}… ({product_side!r}): re-materialize the pipeline with "
                "this encoder, or configure the one it used"
            )
        text_encoder = resource.build_query_encoder()
    if need in ("image", "both"):
        image_encoder = resources["image_encoder"].build()
        fingerprint = str(recorded.get("image") or "unknown")
        if fingerprint != "unknown" and not fingerprint.startswith(image_encoder.fingerprint):
            raise NotMaterialized(
                f"the index was built from image vectors of encoder {fingerprint[:12]}…, but the configured image "
                f"encoder is {image_encoder.fingerprint[:12]}…: re-materialize, or configure the one it used"
            )
        if not (manifest.get("image_decode") or {}).get("draft", True):
            image_encoder = _FullDecode(image_encoder)
    decode = manifest.get("image_decode") or {}
    return Searcher(
        build,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        joint_model=joint_model,
        image_config=ImageConfig(channel_order=decode.get("channel_order", "RGB")),
        threads=threads,
    )


def _definitions_for(storage_dir: str, models_dir: str | None):
    """The code location's definitions (its encoder resources) for this storage dir."""
    from wb_pipeline.definitions import build_definitions

    return build_definitions(storage_dir=storage_dir, models_dir=models_dir)


class _FullDecode:
    """An image encoder seen without `min_decode_side` (the index's photos were decoded in full)."""

    def __init__(self, encoder):
        self._encoder = encoder

    def encode(self, photos):
        return self._encoder.encode(photos)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wb_pipeline.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("query", nargs="?", help="the text to search for")
    parser.add_argument("--image", metavar="PATH", help="search by this photo instead of a text")
    parser.add_argument("--top", type=int_at_least(1), default=10, help="how many products to print (default 10)")
    parser.add_argument("--storage", help="storage dir (default: WB_PIPELINE_STORAGE_DIR, else storage/)")
    parser.add_argument(
        "--models-dir", help="converted encoder models (default: WB_PIPELINE_MODELS_DIR, else <storage>/models)"
    )
    parser.add_argument("--ef-search", type=int_at_least(1), help="HNSW search effort (default: the index's)")
    parser.add_argument(
        "--nprobe", type=int_at_least(1), help="lists an ivf (compressed) index visits (default: the index's)"
    )
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="faiss threads for the search (default 1)")
    parser.add_argument("--timing", action="store_true", help="print the query's latency to stderr")
    args = parser.parse_args(argv)

    from wb_pipeline.core.search.query import QueryError, check_image_file, clean_query_text, format_results

    try:
        if args.image is not None and args.query is not None:
            raise QueryError("give a text query or --image PATH, not both")
        if args.image is None:
            clean_query_text(args.query)  # an empty query fails before any model loads
        else:
            check_image_file(args.image)  # so does a folder, a FIFO, a device or an oversized file
        searcher = open_searcher(
            args.storage,
            args.models_dir,
            "image" if args.image is not None else "text",
            args.threads,
            args.ef_search,
            nprobe=args.nprobe,
        )

        def run():
            return (
                searcher.search_image(args.image, args.top)
                if args.image is not None
                else searcher.search_text(args.query, args.top)
            )

        started = time.perf_counter()
        results = run()
        first_seconds = seconds = time.perf_counter() - started
        if args.timing:  # the first query also loads the encoder: time a second, warm one
            started = time.perf_counter()
            run()
            seconds = time.perf_counter() - started
    except QueryError as error:
        print(f"search: error: {error}", file=sys.stderr)
        return 2
    except NotMaterialized as error:
        print(f"search: error: {error}", file=sys.stderr)
        return 1
    output = format_results(results)
    if output:
        print(output)
    if args.timing:
        print(
            f"search: {len(results)} results in {seconds * 1000:.1f} ms warm, {first_seconds * 1000:.0f} ms with "
            f"the model load (space {searcher.space}, {searcher.build.index.kind} index of "
            f"{searcher.build.index.size})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
