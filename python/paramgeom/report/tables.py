"""Per-tensor tables (Parquet + CSV) and JSON summaries, written atomically and reproducibly.

DESIGN.md, "Checkpoints" (Outputs): a per-tensor table (Parquet and CSV) and a JSON summary.
The columns come from :mod:`paramgeom.engine.schema` (``name -> (arrow type, description)``).

Guarantees:

- Rows are sorted by ``name`` (then ``step`` when the table has one; any remaining tie by the
  row's cell text), so the files do not depend on the order in which ranks delivered rows.
- Bytes are deterministic: same rows, any order, give byte-identical files (for a given pyarrow
  version: Parquet's ``created_by`` field names the writer version; no timestamps are stored).
- Writes are atomic: a temporary file in the destination folder is filled, flushed, fsynced and
  renamed over the target with :func:`os.replace`, so a crash never leaves a half table.
- The CSV round-trips exactly: floats are written with ``repr(float)`` (shortest exact form,
  ``nan``/``inf``/``-inf``), None as an empty cell, and strings are always quoted so an empty
  string (``""``) differs from a missing value (empty cell). :func:`read_csv` reads it back.

pyarrow is imported only when a Parquet file is written or read (it is in the ``train`` extra).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import operator
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from json.encoder import encode_basestring_ascii as _encode_str
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "read_csv",
    "read_table",
    "sort_rows",
    "write_json",
    "write_table",
]

_TYPES = ("string", "int64", "float64")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it over ``path`` atomically.

    The temporary file lives in the same folder (same file system, so :func:`os.replace` is an
    atomic rename), is named ``.<name>.<random>.tmp``, and is removed if the block raises. The
    final file gets mode 0644 (temporary files are created 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        newline = None if "b" in mode else ""
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Best effort: make the rename durable (POSIX); ignored where folders cannot be opened."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _atomic_path(path: Path, writer: Any) -> None:
    """Like :func:`atomic_write` for writers that want a file name, not a file object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------
# rows: validation, coercion, order
# --------------------------------------------------------------------------------------------


def _check_columns(columns: Mapping[str, tuple[str, str]]) -> None:
    if not columns:
        raise ValueError("a table needs at least one column")
    for col, spec in columns.items():
        if not isinstance(spec, tuple) or len(spec) != 2 or spec[0] not in _TYPES:
            raise ValueError(
                f"column {col!r}: type must be one of {_TYPES} given as (type, description), "
                f"got {spec!r}"
            )


def _coerce(value: Any, kind: str, col: str, where: str) -> Any:
    """One cell as a plain Python value of the column's type (None stays None)."""
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, str):
            return str(value)
    elif kind == "int64":
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            v = int(value)
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise ValueError(f"{where}: column {col!r}: {v} does not fit in int64")
            return v
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):  # float64
        return float(value)
    raise ValueError(f"{where}: column {col!r} ({kind}) cannot hold {value!r}")


# The exact Python type each column kind holds after :func:`_coerce`: a cell already of that
# type is kept as it is (what ``_coerce`` would return), without the generic checks, which
# took most of the time of a 50,000-row table.
_PLAIN = {"string": str, "int64": int, "float64": float}


def _normalize(
    rows: Sequence[Mapping[str, Any]], columns: Mapping[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    _check_columns(columns)
    plain = {c: _PLAIN[kind] for c, (kind, _) in columns.items()}
    template = dict.fromkeys(columns)
    out = []
    names = columns.keys()
    for i, row in enumerate(rows):
        if not row.keys() <= names:
            extra = [k for k in row if k not in columns]
            raise ValueError(
                f"row {i} (name {row.get('name')!r}): columns not in the table schema: "
                f"{sorted(extra)}"
            )
        # Cells already of their column's exact type (in range, for int64) are kept as they
        # are, which is what _coerce returns for them; only the others go through it.
        odd = [
            c
            for c, v in row.items()
            if v is not None
            and (type(v) is not plain[c] or (type(v) is int and not _INT64_MIN <= v <= _INT64_MAX))
        ]
        cells = dict(template)
        cells.update(row)
        for c in odd:
            cells[c] = _coerce(row[c], columns[c][0], c, f"row {i} (name {row.get('name')!r})")
        out.append(cells)
    return out


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


# CSV text of a cell of each kind, for the exact types :func:`_normalize` leaves.
_FORMAT = {"float64": float.__repr__, "int64": int.__repr__, "string": _quote}


def _cell(value: Any, kind: str) -> str:
    """CSV text of one cell: repr-exact floats, quoted strings, empty for None."""
    if value is None:
        return ""
    if kind == "float64":
        return repr(float(value))  # 'nan', 'inf', '-inf' included; float(repr(x)) == x
    if kind == "int64":
        return str(int(value))
    return _quote(value)


def sort_rows(
    rows: Sequence[Mapping[str, Any]], columns: Mapping[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """Rows in the tables' canonical order: ``name``, then ``step`` (when a column), then text.

    None sorts before any value. The last key (every cell's CSV text) only breaks exact ties,
    so the order is total and independent of the input order.
    """
    rows = _normalize(rows, columns)
    has_step = "step" in columns

    def key(row: dict[str, Any]) -> tuple:
        name = row.get("name")
        if not has_step:
            return ((name is not None, name or ""),)
        step = row.get("step")
        return ((name is not None, name or ""), (step is not None, step if step is not None else 0))

    def cells(row: dict[str, Any]) -> tuple:
        return tuple(_cell(row[c], kind) for c, (kind, _) in columns.items())

    # Names (and steps) are almost always unique: the every-cell key, which formats every
    # cell as text (11 s for 50,000 rows), is computed only within runs of equal keys.
    keyed = sorted(((key(r), r) for r in rows), key=lambda kr: kr[0])
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(keyed):
        j = i + 1
        while j < len(keyed) and keyed[j][0] == keyed[i][0]:
            j += 1
        if j == i + 1:
            out.append(keyed[i][1])
        else:
            out += sorted((r for _, r in keyed[i:j]), key=cells)
        i = j
    return out


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def _arrow_schema(columns: Mapping[str, tuple[str, str]]) -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema(
        [
            pa.field(c, types[kind], nullable=True, metadata={"description": desc})
            for c, (kind, desc) in columns.items()
        ]
    )


def write_table(
    rows: list[dict], columns: dict[str, tuple[str, str]], out_dir: Path, stem: str
) -> list[Path]:
    """Write the per-tensor table as ``<stem>.parquet`` and ``<stem>.csv`` (DESIGN "Outputs").

    ``columns`` is ``DIFF_COLUMNS`` or ``TRAJECTORY_COLUMNS`` from
    :mod:`paramgeom.engine.schema` (``name -> (type, description)``, type one of ``string``,
    ``int64``, ``float64``; every column nullable). A row missing a column gets null; a row
    with a key that is not a column raises ``ValueError``, as does a value of the wrong type
    (bools are not numbers here; ints are accepted in float columns).

    Rows are sorted by ``name`` (then ``step``), the files are written atomically, and the
    same rows in any order give byte-identical files. Returns ``[parquet_path, csv_path]``.
    """
    out_dir = Path(out_dir)
    ordered = sort_rows(rows, columns)
    # The CSV text is formed before either file is replaced: a failure while formatting
    # leaves both earlier files, never a new Parquet beside an old CSV.
    csv_text = _csv_text(ordered, columns)
    return [
        _write_parquet(ordered, columns, out_dir / f"{stem}.parquet"),
        _write_csv(csv_text, out_dir / f"{stem}.csv"),
    ]


def _write_parquet(
    rows: list[dict[str, Any]], columns: Mapping[str, tuple[str, str]], path: Path
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema(columns)
    table = pa.Table.from_arrays(
        [_arrow_column([row[c] for row in rows], kind) for c, (kind, _) in columns.items()],
        schema=schema,
    )
    codec = "zstd" if pa.Codec.is_available("zstd") else "snappy"
    options: dict[str, Any] = {
        # Everything that shapes the bytes is pinned, not left to library defaults.
        "version": "2.6",
        "compression": codec,
        "use_dictionary": True,
        "write_statistics": True,
        "data_page_version": "1.0",
        "row_group_size": 1 << 20,
        "store_schema": True,
        "write_page_index": False,
        "write_page_checksum": False,
    }
    if codec == "zstd":
        options["compression_level"] = 3
    _atomic_path(path, lambda tmp: pq.write_table(table, tmp, **options))
    return path


def _arrow_column(values: list[Any], kind: str) -> Any:
    """An Arrow array of one column as :func:`_normalize` leaves it, built from its buffers.

    The same array as ``pa.array(values, type)`` (same Parquet bytes), without what that
    call does first: import pandas to ask whether ``values`` is a pandas object (0.8 s, a
    sixth of a small diff's run)."""
    import numpy as np
    import pyarrow as pa

    n = len(values)
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    nulls = n - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    if kind == "string":
        encoded = [b"" if v is None else v.encode() for v in values]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        if offsets[-1] > np.iinfo(np.int32).max:  # beyond 32-bit offsets: arrow's own error
            return pa.array(values, type=pa.string())
        buffers = [bitmap, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
        return pa.Array.from_buffers(pa.string(), n, buffers, null_count=nulls)
    dtype, arrow_type = (np.int64, pa.int64()) if kind == "int64" else (np.float64, pa.float64())
    data = np.fromiter((0 if v is None else v for v in values), dtype=dtype, count=n)
    return pa.Array.from_buffers(arrow_type, n, [bitmap, pa.py_buffer(data)], null_count=nulls)


def _csv_text(rows: list[dict[str, Any]], columns: Mapping[str, tuple[str, str]]) -> str:
    """CSV of rows as :func:`_normalize` leaves them (cells of exactly their kind's type),
    formatted column by column (a list per column, then the lines: a third of the time of
    formatting cell by cell)."""
    texts = []
    for c, (kind, _) in columns.items():
        fmt = _FORMAT[kind]
        texts.append(["" if v is None else fmt(v) for v in map(operator.itemgetter(c), rows)])
    lines = [",".join([_quote(c) for c in columns])]
    lines += map(",".join, zip(*texts, strict=True))
    return "\n".join(lines) + "\n"


def _write_csv(text: str, path: Path) -> Path:
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return path


def read_table(path: Path | str) -> list[dict]:
    """Read a Parquet table written by :func:`write_table` back as a list of row dicts."""
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pylist()


def _split_csv(text: str) -> list[list[tuple[str, bool]]]:
    """Records of ``(text, was_quoted)`` cells; quoted cells may hold commas, quotes, newlines."""
    records: list[list[tuple[str, bool]]] = []
    i, n = 0, len(text)
    while i < n:
        cells: list[tuple[str, bool]] = []
        while True:
            if i < n and text[i] == '"':
                j, buf = i + 1, []
                while True:
                    k = text.find('"', j)
                    if k < 0:
                        raise ValueError("unterminated quoted CSV field")
                    buf.append(text[j:k])
                    if k + 1 < n and text[k + 1] == '"':
                        buf.append('"')
                        j = k + 2
                        continue
                    i = k + 1
                    break
                cells.append(("".join(buf), True))
            else:
                j = i
                while j < n and text[j] not in ",\r\n":
                    j += 1
                cells.append((text[i:j], False))
                i = j
            if i >= n:
                break
            if text[i] == ",":
                i += 1
                continue
            if text.startswith("\r\n", i):
                i += 2
                break
            if text[i] == "\n":
                i += 1
                break
            raise ValueError(f"malformed CSV near offset {i}")
        records.append(cells)
    return records


def read_csv(path: Path | str, columns: Mapping[str, tuple[str, str]]) -> list[dict]:
    """Read a CSV written by :func:`write_table` back, typed by ``columns``.

    Empty unquoted cells are None; quoted cells are strings; numbers are parsed exactly
    (``float(repr(x)) == x``). The header must equal ``columns``' names in order.
    """
    _check_columns(columns)
    with open(path, encoding="utf-8", newline="") as fh:  # keep '\r' inside quoted strings
        records = _split_csv(fh.read())
    if not records:
        raise ValueError(f"{path}: empty CSV (no header)")
    header = [text for text, _ in records[0]]
    if header != list(columns):
        raise ValueError(f"{path}: header {header} differs from the columns {list(columns)}")
    kinds = [kind for kind, _ in columns.values()]
    out = []
    for r, rec in enumerate(records[1:], start=2):
        if len(rec) != len(kinds):
            raise ValueError(f"{path}: line {r} has {len(rec)} cells, expected {len(kinds)}")
        row: dict[str, Any] = {}
        for col, kind, (text, quoted) in zip(columns, kinds, rec, strict=True):
            if not quoted and text == "":
                row[col] = None
            elif kind == "string":
                row[col] = text
            elif kind == "int64":
                row[col] = int(text)
            else:
                row[col] = float(text)
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: NaN/Inf -> None, numpy scalars -> Python, paths -> str, keys -> str."""
    kind = type(obj)  # exact built-in types first: what the generic checks give for them
    if kind is float:
        return obj if math.isfinite(obj) else None
    if kind is str or kind is int or kind is bool:
        return obj
    if kind is dict:
        return {(k if type(k) is str else str(k)): _jsonable(v) for k, v in obj.items()}
    if kind is list:
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in obj]
        if isinstance(obj, (set, frozenset)):
            items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return items
    if hasattr(obj, "tolist"):  # numpy arrays and 0-d arrays
        return _jsonable(obj.tolist())
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


def _scalar(obj: Any) -> str | None:
    """JSON text of a scalar as json.dumps writes it, or None for a container."""
    kind = type(obj)
    if kind is float:
        if not math.isfinite(obj):
            raise ValueError(f"Out of range float values are not JSON compliant: {obj!r}")
        return float.__repr__(obj)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return _encode_str(obj)
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        return _scalar(float(obj))
    return None


def _dump(obj: Any, level: int, out: list[str]) -> None:
    """Append to ``out`` the text of ``json.dumps(obj, sort_keys=True, indent=2,
    allow_nan=False)`` for a :func:`_jsonable` value, character for character: json's own
    encoder runs in Python when it indents (2 s for a 10,000-layer summary); this writes
    a container of scalars in one join."""
    text = _scalar(obj)
    if text is not None:
        out.append(text)
        return
    if isinstance(obj, dict):
        items = sorted(obj.items())
        opener, closer = "{", "}"
    elif isinstance(obj, list):
        items = obj
        opener, closer = "[", "]"
    else:  # pragma: no cover - _jsonable gives nothing else
        raise TypeError(f"cannot write {type(obj).__name__} to JSON")
    if not items:
        out.append(opener + closer)
        return
    inner = ",\n" + "  " * (level + 1)
    out.append(opener + inner[1:])
    is_dict = opener == "{"
    for i, item in enumerate(items):
        if i:
            out.append(inner)
        value = item[1] if is_dict else item
        if is_dict:
            out.append(_encode_str(item[0]) + ": ")
        text = _scalar(value)
        if text is not None:
            out.append(text)
        else:
            _dump(value, level + 1, out)
    out.append("\n" + "  " * level + closer)


def write_json(obj: Any, path: Path | str) -> Path:
    """Write ``obj`` as JSON atomically: sorted keys, indent 2, trailing newline.

    JSON has no NaN or Infinity: non-finite floats are written as ``null``. Numpy scalars and
    arrays become plain numbers and lists, paths become strings, mapping keys become strings.
    """
    path = Path(path)
    chunks: list[str] = []
    _dump(_jsonable(obj), 0, chunks)
    text = "".join(chunks)
    with atomic_write(path, "w") as fh:
        fh.write(text + "\n")
    return path
