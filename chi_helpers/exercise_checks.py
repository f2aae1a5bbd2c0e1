"""Is an exercise's edit in a training script? Read from the script's syntax tree, not its text, so
that any valid way of writing the edit counts: other spacing or quotes, the last dict entry without
its comma, a value held in a variable, `trainer.is_global_zero` for `trainer.global_rank == 0`.

Each check takes the parsed module and answers True when its piece of the edit is there; the
exercises (chi_helpers/exercises.py) pair each check with what to tell a student when it is not.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator

Check = Callable[[ast.Module], bool]


class DoesNotCompile(ValueError):
    """The edited script is not valid Python; the message names the line."""


def parse(text: str, filename: str) -> ast.Module:
    try:
        return ast.parse(text, filename=filename)
    except SyntaxError as error:
        line = (error.text or "").rstrip("\n")
        shown = f"\n    {line.strip()}" if line.strip() else ""
        raise DoesNotCompile(f"{filename} does not compile: line {error.lineno}: {error.msg}{shown}") from None


# --- reading the tree --------------------------------------------------------------------------------

def dotted(node: ast.AST) -> str:
    """`mlflow.pytorch.autolog` for the expression mlflow.pytorch.autolog; "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Every call of `name` (a dotted name, e.g. mlflow.start_run), in the order of the file."""
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and dotted(n.func) == name]
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def ancestors(node: ast.AST, up: dict[ast.AST, ast.AST]) -> Iterator[tuple[ast.AST, ast.AST]]:
    """(ancestor, the child of it on the way down to `node`), from the nearest outwards."""
    while node in up:
        yield up[node], node
        node = up[node]


def assignments(scope: ast.AST) -> dict[str, ast.expr]:
    """name -> value of the plain `name = value` statements in a scope (the last one wins)."""
    found = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found[node.target.id] = node.value
    return found


# --- DataLoader workers ------------------------------------------------------------------------------

def _dict_entries(value: ast.expr) -> dict[str, ast.expr]:
    if isinstance(value, ast.Dict):
        return {k.value: v for k, v in zip(value.keys, value.values)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    if isinstance(value, ast.Call) and dotted(value.func) == "dict":
        return {k.arg: k.value for k in value.keywords if k.arg}
    return {}


def _positive(value: ast.expr, names: dict[str, ast.expr], depth: int = 0) -> bool:
    """A number of workers above 0, as far as the file tells: a literal, or a name bound to one; any
    other expression (os.cpu_count(), say) is taken as the student's choice."""
    if isinstance(value, ast.Constant):
        return isinstance(value.value, int) and not isinstance(value.value, bool) and value.value > 0
    if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
        return False
    if isinstance(value, ast.Name) and value.id in names and depth < 5:
        return _positive(names[value.id], names, depth + 1)
    return not isinstance(value, ast.Name)  # a name bound nowhere in the file is a NameError


def config_has_workers(tree: ast.Module) -> bool:
    """CONFIG (module level) has a "num_workers" entry greater than 0."""
    names = {k: v for statement in tree.body if isinstance(statement, (ast.Assign, ast.AnnAssign))
             for k, v in assignments(statement).items()}
    entries = _dict_entries(names["CONFIG"]) if "CONFIG" in names else {}
    return "num_workers" in entries and _positive(entries["num_workers"], names)


def _reads_config_workers(value: ast.expr, names: dict[str, ast.expr], depth: int = 0) -> bool:
    """config["num_workers"] or config.get("num_workers", ...), directly or through a variable."""
    if isinstance(value, ast.Subscript):
        key = value.slice
        return dotted(value.value) == "config" and isinstance(key, ast.Constant) and key.value == "num_workers"
    if isinstance(value, ast.Call) and dotted(value.func) == "config.get" and value.args:
        first = value.args[0]
        return isinstance(first, ast.Constant) and first.value == "num_workers"
    if isinstance(value, ast.Name) and value.id in names and depth < 5:
        return _reads_config_workers(names[value.id], names, depth + 1)
    return False


def loader_passes_workers(loader: str) -> Check:
    """The DataLoader(...) assigned to `loader` passes num_workers from the config."""
    def check(tree: ast.Module) -> bool:
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            names = assignments(function)
            value = names.get(loader)
            if isinstance(value, ast.Call) and dotted(value.func).split(".")[-1] == "DataLoader":
                workers = next((k.value for k in value.keywords if k.arg == "num_workers"), None)
                if workers is not None and _reads_config_workers(workers, names):
                    return True
        return False
    return check


# --- rank 0 only -------------------------------------------------------------------------------------

def _is_zero(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value == 0 and not isinstance(node.value, bool)


def _rank_names(function: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound to trainer.global_rank, and to trainer.is_global_zero, in a function."""
    ranks, zeros = set(), set()
    for name, value in assignments(function).items():
        if isinstance(value, ast.Attribute) and value.attr == "global_rank":
            ranks.add(name)
        elif isinstance(value, ast.Attribute) and value.attr == "is_global_zero":
            zeros.add(name)
    return ranks, zeros


def _is_rank_zero_test(test: ast.expr, ranks: set[str], zeros: set[str]) -> bool:
    """`trainer.global_rank == 0` (either way round, or through a variable), `trainer.is_global_zero`,
    or one of those joined to other conditions with `and`."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_rank_zero_test(value, ranks, zeros) for value in test.values)
    if isinstance(test, ast.Attribute) and test.attr == "is_global_zero":
        return True
    if isinstance(test, ast.Name) and test.id in zeros:
        return True
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        left, right = test.left, test.comparators[0]

        def is_rank(node):
            return (isinstance(node, ast.Attribute) and node.attr == "global_rank") or \
                (isinstance(node, ast.Name) and node.id in ranks)

        return (is_rank(left) and _is_zero(right)) or (is_rank(right) and _is_zero(left))
    return False


def _under_rank_zero(call: ast.Call, up: dict[ast.AST, ast.AST]) -> bool:
    function = next((a for a, _ in ancestors(call, up) if isinstance(a, ast.FunctionDef)), None)
    ranks, zeros = _rank_names(function) if function else (set(), set())
    for ancestor, child in ancestors(call, up):
        if isinstance(ancestor, ast.If) and child in ancestor.body and _is_rank_zero_test(ancestor.test, ranks, zeros):
            return True
    return False


def only_rank_zero_calls(name: str, after: str = "") -> Check:
    """`name` is called, and every call of it (only those after the first call of `after`, where given)
    sits in the body of an `if` that holds for rank 0 only."""
    def check(tree: ast.Module) -> bool:
        found = calls(tree, name)
        if after:
            marks = calls(tree, after)
            if not marks:
                return False
            found = [c for c in found if (c.lineno, c.col_offset) > (marks[0].lineno, marks[0].col_offset)]
        up = parents(tree)
        return bool(found) and all(_under_rank_zero(c, up) for c in found)
    return check
