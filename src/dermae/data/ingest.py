"""Read a labelled dermoscopy dataset from one of three layouts into one table.

Layouts:
    ham10000  a per-image CSV: `labels.csv` (image_id, diagnosis, lesion_id, file, ...) or the
              original `HAM10000_metadata.csv` (lesion_id, image_id, dx, dx_type, age, sex,
              localization); images are found by id anywhere under the CSV's folder
              (images/<id>.jpg, <id>.jpg, HAM10000_images_part_1/<id>.jpg, ...).
              The ISIC 2020 ground truth reads the same way (image_name, patient_id,
              diagnosis in words, benign_malignant).
    isic      an ISIC ground-truth CSV: an `image` column and one-hot class columns
              (MEL, NV, BCC, AKIEC, BKL, DF, VASC; or a subset, or others such as SCC).
    folders   one folder per class: root/<class_name>/*.jpg|png|...

Every layout gives the same rows: image_id, path (absolute), diagnosis, malignant, group_id,
age, sex, site, dx_type, source="real". Images are not decoded here (the cache does that once);
this module checks what can be checked without pixels and reports every problem at once.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dermae.data.classes import CLASS_DESCRIPTIONS, HAM10000_CLASSES, MALIGNANT_CODES
from dermae.data.errors import DataError
from dermae.data.prepared import MANIFEST_COLUMNS

LAYOUTS = ("ham10000", "isic", "folders")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Ingested rows carry the manifest's columns except those prepare adds (label, split, cache).
ROW_COLUMNS = [c for c in MANIFEST_COLUMNS if c not in ("label", "split", "cache_index")]
# CSV names looked for, in this order, when `root` is a folder.
HAM_CSV_NAMES = ("labels.csv", "HAM10000_metadata.csv", "HAM10000_metadata.original.csv")
# Diagnosis codes the ham10000 layout accepts; anything else is reported as unknown.
KNOWN_DIAGNOSES = frozenset(CLASS_DESCRIPTIONS)

# Column aliases: first one present wins.
ALIASES: dict[str, tuple[str, ...]] = {
    "image_id": ("image_id", "image", "isic_id", "image_name"),
    "diagnosis": ("diagnosis", "dx"),
    # A patient id groups more coarsely than a lesion id; it is used only when there is no
    # lesion id, so that images of one patient never land in two splits.
    "group_id": ("lesion_id", "patient_id"),
    "age": ("age", "age_approx"),
    "sex": ("sex",),
    "site": ("site", "localization", "anatom_site_general", "anatom_site_general_challenge"),
    "dx_type": ("dx_type", "diagnosis_confirm_type"),
    "file": ("file", "path", "filename"),
    # An explicit benign/malignant label (ISIC 2020 style). Read only for rows of an
    # evaluation-only set whose diagnosis is not known (see _evaluation_label).
    "malignant": ("benign_malignant", "target"),
}
# Diagnoses written as words (ISIC 2020's `diagnosis` column) and the HAM10000 code each
# belongs to. HAM10000's bkl groups solar lentigines, seborrheic and lichen-planus-like
# keratoses. Words with no HAM10000 class ("unknown", "cafe-au-lait macule", "atypical
# melanocytic proliferation") stay as they are: such a row is scored only by its
# benign/malignant label, in an evaluation-only set.
DIAGNOSIS_WORDS: dict[str, str] = {
    "nevus": "nv",
    "melanocytic nevus": "nv",
    "melanoma": "mel",
    "basal cell carcinoma": "bcc",
    "actinic keratosis": "akiec",
    "dermatofibroma": "df",
    "vascular lesion": "vasc",
    "squamous cell carcinoma": "scc",
    "seborrheic keratosis": "bkl",
    "lentigo nos": "bkl",
    "solar lentigo": "bkl",
    "lichenoid keratosis": "bkl",
}
# Columns that name an image in a per-image CSV with a diagnosis column (ISIC 2020 calls it
# image_name). Not `image`: that one marks an ISIC one-hot ground truth.
PER_IMAGE_ID_COLUMNS = frozenset(ALIASES["image_id"]) - {"image"}
# Diagnoses of binary (benign/malignant-only) sets: label-only rows in an evaluation set.
BINARY_LABELS = {"benign": 0, "malignant": 1}
METADATA_COLUMNS = frozenset(c for names in ALIASES.values() for c in names)
SKIP_HINT = "or set data.skip_bad=true to skip such rows (they are then listed in skipped.csv)"
MAX_LISTED = 10
# data.group_missing_lesions: a blank lesion_id is an error, or the image is its own lesion.
MISSING_LESION_POLICIES = ("error", "image")
MISSING_LESION_REASON = (
    "no {column}: fill it in, or set data.group_missing_lesions=image to treat each such "
    "image as its own lesion"
)


@dataclass
class IngestResult:
    rows: pd.DataFrame  # ROW_COLUMNS, one row per usable image
    class_names: list[str]
    layout: str
    source: Path  # the CSV read, or the class-folder root
    skipped: list[dict] = field(default_factory=list)  # {"row", "file", "reason"}
    notes: list[str] = field(default_factory=list)  # facts worth printing (nothing dropped)
    source_rows: dict[str, int] = field(default_factory=dict)  # image_id -> CSV line
    missing_lesions: int = 0  # rows without lesion_id grouped as their own lesion (opt-in)


class _Problems:
    """Collects bad rows: raised together at the end, or recorded as skipped."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.items: list[dict] = []

    def add(self, row: int | str, file: str | Path, reason: str) -> None:
        self.items.append({"row": row, "file": str(file), "reason": reason})

    def raise_if_any(self, what: str, force: bool = False) -> None:
        """Raise when there are problems, unless skipping them (`force`: nothing is left)."""
        if (self.skip_bad and not force) or not self.items:
            return
        raise problems_error(self.items, what)


def problems_error(items: list[dict], what: str) -> DataError:
    """One error listing bad rows ({"row", "file", "reason"}), the first MAX_LISTED in full."""
    lines = [_describe(p) for p in items[:MAX_LISTED]]
    more = len(items) - MAX_LISTED
    if more > 0:
        lines.append(f"... and {more} more")
    return DataError(
        f"{len(items)} problem(s) in {what}:\n  "
        + "\n  ".join(lines)
        + f"\nFix or remove these entries, {SKIP_HINT}."
    )


def _describe(problem: dict) -> str:
    where = f"line {problem['row']}: " if problem["row"] != "" else ""
    return f"{where}{problem['file']}: {problem['reason']}"


# ----------------------------------------------------------------------------- layout detection


def _read_header(path: Path) -> list[str]:
    try:
        return [c.strip() for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return []


def _csv_kind(path: Path) -> str | None:
    """'ham10000', 'isic' or None, judged from a CSV's header."""
    cols = set(_read_header(path))
    if (PER_IMAGE_ID_COLUMNS & cols) and ({"diagnosis", "dx"} & cols):
        return "ham10000"  # per-image rows with a diagnosis column (HAM10000, ISIC 2020)
    if "image" in cols and len(cols - METADATA_COLUMNS) >= 1:
        return "isic"
    return None


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: str | Path, layout: str = "auto") -> tuple[str, Path]:
    """(layout, source): the CSV to read, or `root` itself for class folders."""
    root = Path(root).expanduser().resolve()
    if layout not in ("auto", *LAYOUTS):
        raise DataError(f"unknown data layout '{layout}'; use auto, {', '.join(LAYOUTS)}")
    if not root.exists():
        raise DataError(
            f"data root {root} does not exist: set data.root (or the DERMAE_DATA environment "
            "variable) to the dataset folder, or fetch it with `dermae data fetch`"
        )
    if root.is_file():
        kind = _csv_kind(root)
        if layout == "folders" or (layout == "auto" and kind is None):
            raise DataError(
                f"{root} is a file but not a recognised labels CSV (found columns "
                f"{_read_header(root)}); expected image_id + diagnosis/dx, or image + one-hot "
                "class columns"
            )
        return (kind if layout == "auto" else layout), root
    if layout == "folders":
        return "folders", root
    csvs = [root / n for n in HAM_CSV_NAMES if (root / n).is_file()]
    csvs += sorted(p for p in root.glob("*.csv") if p not in csvs)
    for csv in csvs:
        kind = _csv_kind(csv)
        if kind is not None and layout in ("auto", kind):
            return kind, csv
    # A CSV with a HAM10000 name (or the only CSV, for isic) is read anyway, so that the
    # error names its missing columns instead of guessing another layout.
    named = [p for p in csvs if p.name in HAM_CSV_NAMES]
    if named and layout in ("auto", "ham10000"):
        return "ham10000", named[0]
    if layout == "isic" and len(csvs) == 1:
        return "isic", csvs[0]
    if layout in ("ham10000", "isic"):
        raise DataError(
            f"no {layout} labels CSV found in {root} (looked at: "
            f"{', '.join(p.name for p in csvs) or 'no CSV files'}); point data.root at the CSV "
            "file itself or fix its columns"
        )
    if _class_dirs(root):
        return "folders", root
    raise DataError(
        f"cannot tell the layout of {root}: expected labels.csv / HAM10000_metadata.csv, an "
        "ISIC ground-truth CSV (image + one-hot columns), or one sub-folder per class"
    )


def fingerprint_tree(root: str | Path) -> str:
    """Cheap identity of a dataset folder: names, sizes and mtimes of its images and CSVs."""
    root = Path(root).expanduser().resolve()
    digest = hashlib.sha256(str(root).encode())
    base = root if root.is_dir() else root.parent
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_EXTENSIONS or suffix in (".csv", ".tab"):
                st = os.stat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- helpers


def _malignant_label(value: str) -> int | None:
    """1 / 0 for a malignant / benign label (1, malignant, true, yes / 0, benign, ...)."""
    text = value.strip().lower()
    if text in ("1", "1.0", "malignant", "true", "yes"):
        return 1
    if text in ("0", "0.0", "benign", "false", "no"):
        return 0
    return None


def _evaluation_label(dx: str, label: str) -> tuple[str, int | None] | str:
    """For a row of an evaluation-only set: (diagnosis, malignant) or why it cannot be used.

    A known diagnosis wins (malignant None: derived from it). A diagnosis the vocabulary does
    not know still counts for the malignant metrics when the row says benign or malignant.
    """
    if dx in KNOWN_DIAGNOSES:
        return dx, None
    if dx in BINARY_LABELS:
        return dx, BINARY_LABELS[dx]
    malignant = _malignant_label(label)
    if malignant is not None:
        return dx or "unknown", malignant
    named = f"unknown diagnosis '{dx}'" if dx and dx != "unknown" else "no diagnosis"
    return (
        f"{named} and no benign/malignant label (column "
        f"{'/'.join(ALIASES['malignant'])}/malignant): the row cannot be scored"
    )


def _image_index(base: Path) -> dict[str, list[Path]]:
    """Image stem -> files with that stem anywhere under `base` (one walk, not 10k lookups)."""
    index: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_EXTENSIONS:
                index.setdefault(stem, []).append(Path(dirpath) / name)
    return index


def _pick_column(columns: Iterable[str], key: str) -> str | None:
    cols = list(columns)
    return next((c for c in ALIASES[key] if c in cols), None)


def _parse_age(values: pd.Series, notes: list[str], source: Path) -> pd.Series:
    ages = pd.to_numeric(values.str.strip(), errors="coerce").astype(float)
    odd = values[(values.str.strip() != "") & ages.isna()]
    if len(odd):
        notes.append(
            f"{source.name}: {len(odd)} age value(s) are not numbers (e.g. {odd.iloc[0]!r}) "
            "and were read as unknown"
        )
    return ages


def _text(values: pd.Series | None, n: int) -> list[str]:
    if values is None:
        return ["unknown"] * n
    return [v.strip() if v.strip() else "unknown" for v in values]


def outside_root_reason(path: Path, root: Path, shown: str | Path) -> str:
    """'' when `path` (symlinks followed) lies under `root`, else why it is refused."""
    resolved = path.resolve()
    if resolved.is_relative_to(root.resolve()):
        return ""
    return (
        f"'{shown}' resolves to {resolved}, outside the data root {root}: move the image under "
        "the root, or set data.allow_outside_root=true to read it anyway"
    )


def _resolve_image(
    image_id: str,
    file_value: str,
    base: Path,
    index: dict[str, list[Path]],
    allow_outside_root: bool = False,
) -> tuple[Path | None, str]:
    """The image file of one CSV row, or (None, reason). A path that leaves `base` (`..`, an
    absolute path, a symlink) is refused unless allowed: a CSV should not read arbitrary files."""

    def checked(path: Path, shown: str | Path) -> tuple[Path | None, str]:
        reason = "" if allow_outside_root else outside_root_reason(path, base, shown)
        return (None, reason) if reason else (path.resolve(), "")

    if file_value:
        given = Path(file_value).expanduser()
        candidate = given if given.is_absolute() else base / given
        if candidate.is_file():
            return checked(candidate, file_value)
    found = index.get(image_id, [])
    if len(found) == 1:
        return checked(found[0], found[0].relative_to(base))
    if len(found) > 1:
        listed = ", ".join(str(p.relative_to(base)) for p in found[:3])
        return None, f"several files match image id {image_id} ({listed}); keep only one"
    looked = f"'{file_value}', " if file_value else ""
    return None, (
        f"image file not found for {image_id} (looked for {looked}{image_id}.jpg|png|... "
        f"anywhere under {base}); add the file or remove the row"
    )


def _finish(
    records: list[dict],
    class_names: list[str],
    problems: _Problems,
    layout: str,
    source: Path,
    notes: list[str],
    evaluation_only: bool = False,
    source_rows: dict[str, int] | None = None,
) -> IngestResult:
    """Check for empty classes, then build the table."""
    present = {r["diagnosis"] for r in records}
    if evaluation_only:
        class_names = [c for c in class_names if c in present]
    for name in [c for c in class_names if c not in present]:
        problems.add("", source, f"class '{name}' has no images; add images or drop the class")
    problems.raise_if_any(str(source), force=not records)
    class_names = [c for c in class_names if c in present]
    if not records:
        raise DataError(f"no usable images in {source}; check data.root and data.layout")
    rows = pd.DataFrame.from_records(records, columns=ROW_COLUMNS)
    # Rows of an evaluation set may carry an explicit label; the others derive it.
    from_dx = rows["diagnosis"].isin(MALIGNANT_CODES).astype(int)
    rows["malignant"] = pd.to_numeric(rows["malignant"]).fillna(from_dx).astype(int)
    rows["source"] = "real"
    rows["age"] = rows["age"].astype(float)
    if not any(c in MALIGNANT_CODES for c in class_names) and not rows["malignant"].any():
        notes.append(
            f"no class is a known malignant code ({', '.join(sorted(MALIGNANT_CODES))}): "
            "malignant-vs-benign metrics will be undefined"
        )
    return IngestResult(
        rows, class_names, layout, source, problems.items, notes, dict(source_rows or {})
    )


def _ordered_classes(names: Iterable[str]) -> list[str]:
    """HAM10000 / ISIC-7 keep the ISIC order; any other vocabulary is sorted."""
    names = set(names)
    if names <= set(HAM10000_CLASSES):
        return list(HAM10000_CLASSES)
    return sorted(names)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} as CSV ({err}); check the file") from err
    table.columns = [c.strip() for c in table.columns]
    return table


def _require(table: pd.DataFrame, path: Path, needed: dict[str, str | None]) -> None:
    missing = [k for k, col in needed.items() if col is None]
    if missing:
        wanted = "; ".join(f"{k}: one of {'/'.join(ALIASES[k])}" for k in missing)
        raise DataError(
            f"{path} lacks required column(s) ({wanted}); found columns {list(table.columns)}"
        )


def _missing_lesions_note(csv: Path, count: int) -> str:
    return (
        f"{csv.name}: {count} row(s) have no lesion_id; each was grouped as its own lesion "
        "(data.group_missing_lesions=image), so images of one lesion may land in different splits"
    )


# ----------------------------------------------------------------------------- layouts


def ingest_ham10000(
    csv: Path,
    skip_bad: bool = False,
    evaluation_only: bool = False,
    missing_lesions: str = "error",
    allow_outside_root: bool = False,
) -> IngestResult:
    table = _read_csv(csv)
    cols = {k: _pick_column(table.columns, k) for k in ALIASES}
    _require(table, csv, {"image_id": cols["image_id"], "diagnosis": cols["diagnosis"]})
    notes: list[str] = []
    if cols["group_id"] is None:
        notes.append(
            f"{csv.name} has no lesion_id column: each image is its own group, so images of "
            "one lesion may land in different splits"
        )
    base = csv.parent
    index = _image_index(base)
    problems = _Problems(skip_bad)
    n = len(table)
    ids = [v.strip() for v in table[cols["image_id"]]]
    dx = [v.strip().lower() for v in table[cols["diagnosis"]]]
    worded = sum(d in DIAGNOSIS_WORDS for d in dx)
    if worded:
        dx = [DIAGNOSIS_WORDS.get(d, d) for d in dx]
        notes.append(
            f"{csv.name}: {worded} diagnosis word(s) read as HAM10000 codes "
            "(nevus -> nv, melanoma -> mel, seborrheic keratosis / lentigo -> bkl, ...)"
        )
    groups = [v.strip() for v in table[cols["group_id"]]] if cols["group_id"] else [""] * n
    files = [v.strip() for v in table[cols["file"]]] if cols["file"] else [""] * n
    ages = _parse_age(table[cols["age"]], notes, csv) if cols["age"] else pd.Series([math.nan] * n)
    sex = _text(table[cols["sex"]] if cols["sex"] else None, n)
    site = _text(table[cols["site"]] if cols["site"] else None, n)
    dx_type = _text(table[cols["dx_type"]] if cols["dx_type"] else None, n)

    label_col = cols["malignant"] or ("malignant" if "malignant" in table.columns else None)
    labels = [v.strip() for v in table[label_col]] if label_col else [""] * n

    first_line: dict[str, int] = {}
    records = []
    grouped_by_image = 0
    for i in range(n):
        line = i + 2  # header is line 1
        image_id = ids[i]
        if not image_id:
            problems.add(line, csv, "empty image_id")
            continue
        if image_id in first_line:
            problems.add(
                line, csv, f"duplicate image_id {image_id} (first on line {first_line[image_id]})"
            )
            continue
        first_line[image_id] = line
        diagnosis, malignant = dx[i], None
        if evaluation_only:
            usable = _evaluation_label(dx[i], labels[i])
            if isinstance(usable, str):
                problems.add(line, csv, f"{image_id}: {usable}")
                continue
            diagnosis, malignant = usable
        elif dx[i] not in KNOWN_DIAGNOSES:
            problems.add(
                line,
                csv,
                f"unknown diagnosis '{dx[i]}' for {image_id} "
                f"(known: {', '.join(sorted(KNOWN_DIAGNOSES))})",
            )
            continue
        path, reason = _resolve_image(image_id, files[i], base, index, allow_outside_root)
        if path is None:
            problems.add(line, csv, reason)
            continue
        if cols["group_id"] and not groups[i]:
            # A silent own group would let one lesion's images straddle train and test.
            if missing_lesions != "image":
                reason = MISSING_LESION_REASON.format(column=cols["group_id"])
                problems.add(line, csv, f"{image_id}: {reason}")
                continue
            grouped_by_image += 1
        records.append(
            {
                "image_id": image_id,
                "path": str(path),
                "diagnosis": diagnosis,
                "malignant": malignant,
                "group_id": groups[i] or image_id,
                "age": ages.iloc[i],
                "sex": sex[i],
                "site": site[i],
                "dx_type": dx_type[i],
            }
        )
    if grouped_by_image:
        notes.append(_missing_lesions_note(csv, grouped_by_image))
    # Label-only rows (a diagnosis outside the vocabulary) are no class of the set.
    classes = _ordered_classes(r["diagnosis"] for r in records if r["malignant"] is None)
    result = _finish(
        records, classes, problems, "ham10000", csv, notes, evaluation_only, first_line
    )
    result.missing_lesions = grouped_by_image
    return result


def _is_zero_one(value: str) -> bool | None:
    """True for 1, False for 0, None for anything else."""
    try:
        number = float(value)
    except ValueError:
        return None
    return {0.0: False, 1.0: True}.get(number)


def ingest_isic(
    csv: Path,
    skip_bad: bool = False,
    evaluation_only: bool = False,
    missing_lesions: str = "error",
    allow_outside_root: bool = False,
) -> IngestResult:
    table = _read_csv(csv)
    image_col = "image" if "image" in table.columns else _pick_column(table.columns, "image_id")
    if image_col is None:
        raise DataError(
            f"{csv} lacks the 'image' column of an ISIC ground-truth CSV; found {list(table.columns)}"
        )
    notes: list[str] = []
    candidates = [c for c in table.columns if c != image_col and c not in METADATA_COLUMNS]
    class_cols = []
    for col in candidates:
        parsed = [_is_zero_one(v) for v in table[col]]
        if all(p is None for p in parsed):
            notes.append(f"{csv.name}: column '{col}' is not a 0/1 class column; ignored")
        elif col.upper() == "UNK" and not any(parsed):
            # ISIC 2019 ships an all-zero UNK ("none of the others") column in its ground truth.
            notes.append(f"{csv.name}: all-zero UNK column ignored")
        else:
            class_cols.append(col)
    if not class_cols:
        raise DataError(
            f"{csv} has no one-hot class columns (e.g. MEL, NV, BCC, AKIEC, BKL, DF, VASC); "
            f"found {list(table.columns)}"
        )
    names = {col: col.strip().lower() for col in class_cols}
    group_col = _pick_column(table.columns, "group_id")
    if group_col is None:
        notes.append(f"{csv.name}: no lesion_id column, so each image is its own group")
    cols = {k: _pick_column(table.columns, k) for k in ("age", "sex", "site", "dx_type", "file")}
    n = len(table)
    ages = _parse_age(table[cols["age"]], notes, csv) if cols["age"] else pd.Series([math.nan] * n)
    sex = _text(table[cols["sex"]] if cols["sex"] else None, n)
    site = _text(table[cols["site"]] if cols["site"] else None, n)
    dx_type = _text(table[cols["dx_type"]] if cols["dx_type"] else None, n)
    files = [v.strip() for v in table[cols["file"]]] if cols["file"] else [""] * n
    groups = [v.strip() for v in table[group_col]] if group_col else [""] * n
    label_col = _pick_column(table.columns, "malignant")
    labels = [v.strip() for v in table[label_col]] if label_col else [""] * n

    base = csv.parent
    index = _image_index(base)
    problems = _Problems(skip_bad)
    onehot = {col: [_is_zero_one(v) for v in table[col]] for col in class_cols}
    first_line: dict[str, int] = {}
    records = []
    grouped_by_image = 0
    for i in range(n):
        line = i + 2
        image_id = table[image_col].iloc[i].strip()
        if not image_id:
            problems.add(line, csv, "empty image id")
            continue
        if image_id in first_line:
            problems.add(
                line, csv, f"duplicate image {image_id} (first on line {first_line[image_id]})"
            )
            continue
        first_line[image_id] = line
        bad = [c for c in class_cols if onehot[c][i] is None]
        if bad:
            problems.add(line, csv, f"{image_id}: value of column {bad[0]} is not 0 or 1")
            continue
        hot = [c for c in class_cols if onehot[c][i]]
        diagnosis, malignant = (names[hot[0]] if len(hot) == 1 else ""), None
        if evaluation_only and len(hot) <= 1:
            usable = _evaluation_label(diagnosis, labels[i])
            if isinstance(usable, str):
                problems.add(line, csv, f"{image_id}: {usable}")
                continue
            diagnosis, malignant = usable
        elif len(hot) != 1:
            problems.add(
                line,
                csv,
                f"{image_id} has {len(hot)} positive class columns ({', '.join(hot) or 'none'}); "
                "expected exactly one 1 (unknown diagnosis)",
            )
            continue
        path, reason = _resolve_image(image_id, files[i], base, index, allow_outside_root)
        if path is None:
            problems.add(line, csv, reason)
            continue
        if group_col and not groups[i]:
            if missing_lesions != "image":
                reason = MISSING_LESION_REASON.format(column=group_col)
                problems.add(line, csv, f"{image_id}: {reason}")
                continue
            grouped_by_image += 1
        records.append(
            {
                "image_id": image_id,
                "path": str(path),
                "diagnosis": diagnosis,
                "malignant": malignant,
                "group_id": groups[i] or image_id,
                "age": ages.iloc[i],
                "sex": sex[i],
                "site": site[i],
                "dx_type": dx_type[i],
            }
        )
    if grouped_by_image:
        notes.append(_missing_lesions_note(csv, grouped_by_image))
    classes = _ordered_classes(names.values())
    if evaluation_only:  # a class column outside the vocabulary only labels rows
        classes = [c for c in classes if c in KNOWN_DIAGNOSES]
    result = _finish(records, classes, problems, "isic", csv, notes, evaluation_only, first_line)
    result.missing_lesions = grouped_by_image
    return result


def ingest_folders(
    root: Path,
    skip_bad: bool = False,
    evaluation_only: bool = False,
    allow_outside_root: bool = False,
) -> IngestResult:
    problems = _Problems(skip_bad)
    notes: list[str] = []
    dirs = _class_dirs(root)
    if not dirs:
        raise DataError(f"{root} has no class sub-folders (expected root/<class_name>/*.jpg)")
    seen: dict[str, Path] = {}
    records = []
    ignored = 0
    classes = set()
    for folder in dirs:
        name = folder.name.strip().lower()
        # A scored-only set's folder must name a diagnosis or benign/malignant: any other
        # name would silently be counted benign.
        usable = _evaluation_label(name, "") if evaluation_only else (name, None)
        if not isinstance(usable, str) and usable[1] is None:
            classes.add(name)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
                ignored += 1
                continue
            if isinstance(usable, str):
                problems.add("", path, f"folder '{folder.name}': {usable}")
                continue
            image_id = path.stem
            if image_id in seen:
                problems.add(
                    "",
                    path,
                    f"duplicate image id {image_id} (also {seen[image_id]}); rename or remove one",
                )
                continue
            seen[image_id] = path
            outside = "" if allow_outside_root else outside_root_reason(path, root, path)
            if outside:
                problems.add("", path, outside)
                continue
            records.append(
                {
                    "image_id": image_id,
                    "path": str(path.resolve()),
                    "diagnosis": name,
                    "malignant": usable[1],
                    "group_id": image_id,
                    "age": math.nan,
                    "sex": "unknown",
                    "site": "unknown",
                    "dx_type": "unknown",
                }
            )
    if ignored:
        notes.append(f"{root}: {ignored} non-image file(s) ignored")
    notes.append(f"{root}: class folders carry no lesion ids, so each image is its own group")
    # The folders name the classes: a HAM10000 subset keeps the ISIC order, nothing is added.
    ordered = [c for c in _ordered_classes(classes) if c in set(classes)]
    return _finish(records, ordered, problems, "folders", root, notes, evaluation_only)


def ingest_dataset(
    root: str | Path,
    layout: str = "auto",
    skip_bad: bool = False,
    evaluation_only: bool = False,
    missing_lesions: str = "error",
    allow_outside_root: bool = False,
) -> IngestResult:
    """Read any supported layout. Bad rows raise one `DataError` listing them all, unless
    `skip_bad`, in which case they are returned in `.skipped` (row, file, reason).

    `evaluation_only`: a set that is only scored (e.g. a clinic's nevus-vs-melanoma set) may
    lack classes; the class list is then what the set holds.
    `missing_lesions`: "error" makes a blank lesion_id a bad row; "image" groups it by image.
    `allow_outside_root`: read image paths that resolve outside the dataset folder.
    """
    if missing_lesions not in MISSING_LESION_POLICIES:
        raise DataError(
            f"data.group_missing_lesions='{missing_lesions}' is unknown; use one of "
            f"{', '.join(MISSING_LESION_POLICIES)}"
        )
    kind, source = detect_layout(root, layout)
    if kind == "ham10000":
        result = ingest_ham10000(
            source, skip_bad, evaluation_only, missing_lesions, allow_outside_root
        )
    elif kind == "isic":
        result = ingest_isic(source, skip_bad, evaluation_only, missing_lesions, allow_outside_root)
    else:
        result = ingest_folders(source, skip_bad, evaluation_only, allow_outside_root)
    return result
