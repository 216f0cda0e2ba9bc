"""Reading recipe text safely: a YAML 1.2 reader with budgets, and `--set` overrides.

Everything a user types as a recipe goes through here before pydantic sees it
(qdeploy.recipe validates the values):
  - a recipe file is a regular UTF-8 file of at most MAX_BYTES (a UTF-8 BOM is allowed;
    UTF-16/32, Latin-1 or NUL bytes are refused naming the file);
  - YAML is read with the YAML 1.2 core schema (`1e6` is a float, `yes`, `on` and dates
    are strings, `010` is ten), plain YAML only: no python/custom tags;
  - budgets are checked on the composed node graph *before* anything is constructed:
    nesting depth, alias count and the size the document would have with every alias
    expanded (an alias bomb of a few hundred bytes is refused at once, not expanded), and
    recursive aliases;
  - a key given twice in one mapping is refused, naming the key and both lines.
Every problem is a UserError of one line.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from core.errors import UserError

MAX_BYTES = 1 << 20  # a recipe is a page of YAML; anything near this size is not one
MAX_DEPTH = 32  # nesting of mappings/sequences (a recipe needs 3)
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 20_000  # the default recipe has about 80 nodes
MAX_NUMBER_CHARS = 40  # digits of one number literal
MAX_SET_CHARS = 4096  # one --set value
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema, a depth/alias budget and unique keys."""

    yaml_implicit_resolvers: dict = {}  # our own table (YAML 1.2 core), not SafeLoader's 1.1 one

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Budget(f"more than {MAX_ALIASES} aliases", self.peek_event().start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Budget(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, ScalarNode):
                raise ConstructorError(None, None, "a key must be a plain name, not a list or mapping",
                                       key_node.start_mark)
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _Duplicate(f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line}): "
                                 "keep one", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


class _Budget(yaml.MarkedYAMLError):
    def __init__(self, problem, mark):
        super().__init__(problem=f"{problem}: refused before reading it", problem_mark=mark)


class _Duplicate(yaml.MarkedYAMLError):
    def __init__(self, problem, mark):
        super().__init__(problem=problem, problem_mark=mark)


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if len(text) > MAX_NUMBER_CHARS:
        raise ConstructorError(None, None, f"number of {len(text)} digits is out of any range", node.start_mark)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _construct_float(loader, node):
    text = loader.construct_scalar(node)
    if len(text) > MAX_NUMBER_CHARS:
        raise ConstructorError(None, None, f"number of {len(text)} characters is out of any range", node.start_mark)
    return float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf")
                 .replace(".nan", "nan").replace(".NaN", "nan").replace(".NAN", "nan"))


RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
RecipeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
RecipeLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _check_graph(root) -> None:
    """The size of the document with every alias expanded, computed on the shared graph
    (linear time); recursive aliases are refused."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise _Budget("an alias refers to the node that contains it (recursive)", node.start_mark)
        open_.add(key)
        n = 1
        if isinstance(node, SequenceNode):
            n += sum(size(v) for v in node.value)
        elif isinstance(node, MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        open_.discard(key)
        if n > MAX_EXPANDED_NODES:
            raise _Budget(f"expands to more than {MAX_EXPANDED_NODES:,} values (alias bomb?)", node.start_mark)
        sizes[key] = n
        return n

    size(root)


def _yaml_message(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        problem = ", ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        problem = problem.replace("could not determine a constructor for the tag",
                                  "tags are not allowed in a recipe (plain YAML only); found tag")
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{problem}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def parse_yaml(text: str, source: str):
    """YAML text -> Python data (dicts, lists, scalars); UserError naming `source`."""
    loader = None
    try:
        loader = RecipeLoader(text)  # the reader already refuses non-printable characters
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    except (_Budget, _Duplicate) as e:
        raise UserError(f"{source}: {_yaml_message(e)}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML ({_yaml_message(e)})") from None
    except (ValueError, TypeError, RecursionError) as e:  # a value the constructor cannot build
        raise UserError(f"{source}: not valid YAML ({type(e).__name__}: {str(e)[:120]})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _decode(raw: bytes, path: Path) -> str:
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                      (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if raw.startswith(bom):
            raise UserError(f"recipe {path} is {name} text: save it as UTF-8")
    if b"\x00" in raw:
        raise UserError(f"recipe {path} holds NUL bytes (UTF-16 without a byte-order mark, or not text): save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"recipe {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}; Latin-1?): "
                        "save it as UTF-8") from None


def read_recipe_file(path: Path):
    """The data of a recipe file (anything YAML gives; the caller checks it is a mapping)."""
    if path.is_dir():
        raise UserError(f"recipe {path} is a directory: give a YAML file, e.g. {path / 'default.yaml'}")
    if not path.exists():
        raise UserError(f"recipe {path} not found")
    if not path.is_file():
        raise UserError(f"recipe {path} is not a regular file (a device, socket or pipe): give a YAML file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read recipe {path}: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise UserError(f"recipe {path} is larger than {MAX_BYTES // 2**20} MiB: a recipe is a short YAML file")
    return parse_yaml(_decode(raw, path), str(path))


def _printable(text: str) -> bool:
    return not any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in text)


def parse_override(item: str) -> tuple[str, object]:
    """One `--set key=value`: a dotted recipe key and its YAML value."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value, e.g. --set model.weight_bits=3")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        text.encode("utf-8")
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"--set {item!r}: not valid UTF-8 (check the terminal's encoding)") from None
    if not KEY.match(key):
        raise UserError(f"--set {item!r}: {key!r} is not a recipe key; expected section.key, e.g. train.lr")
    if len(text) > MAX_SET_CHARS:
        raise UserError(f"--set {key}: the value is longer than {MAX_SET_CHARS} characters")
    if not _printable(text):
        raise UserError(f"--set {key}: the value holds control characters ({text!r})")
    return key, parse_yaml(text.strip(" \t"), f"--set {key}")


def apply_override(data: dict, dotted: str, value) -> None:
    """data[a][b] = value for 'a.b', creating missing sections; a scalar or list on the way is an error."""
    *parents, leaf = dotted.split(".")
    node, path = data, []
    for p in parents:
        path.append(p)
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        elif not isinstance(child, dict):
            kind = "a list" if isinstance(child, (list, tuple)) else f"a value ({child!r})"
            raise UserError(f"--set {dotted}: {'.'.join(path)} is {kind}, not a section with keys: "
                            f"set {'.'.join(path)} itself, e.g. --set {'.'.join(path)}=...")
        node = child
    node[leaf] = value
