"""The collection's shape: galaxy.yml, meta/runtime.yml, module docs, role argument specs.

These run in a second and catch, before the slower ``ansible-test sanity``, what would make the
collection unbuildable or a module undocumented.
"""
import ast
import os
import re
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import ansible.release

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "xen2kvm"
NAME = "migration"
FQCN = f"{NAMESPACE}.{NAME}"

GALAXY_NAME_RE = re.compile(r"^(?!_)[a-z0-9_]{2,64}$")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
DOC_VARS = ("DOCUMENTATION", "EXAMPLES", "RETURN")

MODULES = sorted(p for p in (REPO / "plugins" / "modules").glob("*.py") if p.name != "__init__.py")
ROLES = sorted(p for p in (REPO / "roles").glob("*") if p.is_dir() and not p.name.startswith("."))


def _load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module", name="galaxy")
def galaxy_fixture():
    return _load_yaml(REPO / "galaxy.yml")


@pytest.fixture(scope="module", name="runtime")
def runtime_fixture():
    return _load_yaml(REPO / "meta" / "runtime.yml")


# ---------------------------------------------------------------------------------- galaxy.yml

def test_galaxy_identity(galaxy):
    assert galaxy["namespace"] == NAMESPACE
    assert galaxy["name"] == NAME
    for key in ("namespace", "name"):
        assert GALAXY_NAME_RE.match(galaxy[key]), f"galaxy.yml {key}={galaxy[key]!r} is not a valid Galaxy name"


def test_galaxy_required_fields(galaxy):
    for key in ("version", "readme", "authors", "description", "repository"):
        assert galaxy.get(key), f"galaxy.yml: {key} is missing or empty"
    assert galaxy.get("license") or galaxy.get("license_file"), "galaxy.yml needs license or license_file"
    assert isinstance(galaxy["authors"], list) and all(isinstance(a, str) for a in galaxy["authors"])
    assert SEMVER_RE.match(str(galaxy["version"])), f"version {galaxy['version']!r} is not semantic versioning"
    assert (REPO / galaxy["readme"]).is_file(), f"readme {galaxy['readme']!r} does not exist"
    assert isinstance(galaxy.get("dependencies") or {}, dict)


def test_galaxy_tags(galaxy):
    tags = galaxy.get("tags") or []
    assert isinstance(tags, list) and len(tags) <= 20
    for tag in tags:
        assert re.match(r"^[a-z0-9_]+$", str(tag)), f"tag {tag!r}: Galaxy tags are lowercase letters, digits and _"


def test_galaxy_build_ignores_local_state(galaxy):
    ignored = set(galaxy.get("build_ignore") or [])
    for entry in (".venv", "build", "tests/output"):
        assert entry in ignored, f"galaxy.yml build_ignore should list {entry!r}"


def test_collection_builds(tmp_path):
    """ansible-galaxy's own validation of galaxy.yml, and no local state in the artifact."""
    galaxy_cli = Path(sys.executable).with_name("ansible-galaxy")
    if not galaxy_cli.exists():
        pytest.skip("ansible-galaxy is not installed next to this python")
    proc = subprocess.run(
        [str(galaxy_cli), "collection", "build", "--output-path", str(tmp_path), str(REPO)],
        capture_output=True, text=True, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (artifact,) = tmp_path.glob(f"{NAMESPACE}-{NAME}-*.tar.gz")
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
    assert "MANIFEST.json" in names and "FILES.json" in names
    leaked = [n for n in names if n.split("/")[0] in (".venv", "build", ".git", ".pytest_cache")]
    assert not leaked, f"local state in the collection artifact: {leaked[:10]}"
    for module in MODULES:
        assert f"plugins/modules/{module.name}" in names


# ------------------------------------------------------------------------------- runtime.yml

def test_runtime_requires_ansible(runtime):
    spec = runtime.get("requires_ansible")
    assert spec, "meta/runtime.yml must set requires_ansible"
    installed = Version(ansible.release.__version__)
    assert installed in SpecifierSet(spec), f"ansible-core {installed} does not satisfy requires_ansible {spec!r}"


def test_runtime_routing_targets_exist(runtime):
    routing = runtime.get("plugin_routing") or {}
    for plugin_type, entries in routing.items():
        for name, entry in (entries or {}).items():
            redirect = (entry or {}).get("redirect", "")
            if redirect.startswith(FQCN + "."):
                target = redirect[len(FQCN) + 1:]
                path = REPO / "plugins" / plugin_type / (target.replace(".", "/") + ".py")
                assert path.is_file(), f"plugin_routing.{plugin_type}.{name} redirects to missing {redirect}"
    for group, members in (runtime.get("action_groups") or {}).items():
        for member in members or []:
            if isinstance(member, str):
                short = member[len(FQCN) + 1:] if member.startswith(FQCN + ".") else member
                assert (REPO / "plugins" / "modules" / f"{short}.py").is_file(), f"action_groups.{group}: no module {member}"


# ----------------------------------------------------------------------------------- modules

def _doc_strings(path):
    """Top-level string assignments DOCUMENTATION/EXAMPLES/RETURN, without importing the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in DOC_VARS:
                assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), \
                    f"{path.name}: {name} must be a plain string literal"
                found[name] = node.value.value
    return tree, found


def _parse(path, var, text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        pytest.fail(f"{path.name}: {var} is not valid YAML (quote strings containing ': ' or ' #'):\n{exc}")


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_documentation(path):
    _tree, docs = _doc_strings(path)
    missing = [v for v in DOC_VARS if v not in docs]
    assert not missing, f"{path.name} lacks {', '.join(missing)}"

    doc = _parse(path, "DOCUMENTATION", docs["DOCUMENTATION"])
    assert isinstance(doc, dict), f"{path.name}: DOCUMENTATION must be a YAML mapping"
    assert doc.get("module") == path.stem, f"{path.name}: DOCUMENTATION.module is {doc.get('module')!r}"
    for key in ("short_description", "description", "author"):
        assert doc.get(key), f"{path.name}: DOCUMENTATION.{key} is missing"
    for opt, spec in (doc.get("options") or {}).items():
        assert isinstance(spec, dict) and spec.get("description"), f"{path.name}: option {opt} has no description"
    for frag in doc.get("extends_documentation_fragment") or []:
        if frag.startswith(FQCN + "."):
            fragment_file = frag[len(FQCN) + 1:].split(".")[0] + ".py"
            assert (REPO / "plugins" / "doc_fragments" / fragment_file).is_file(), f"{path.name}: no doc fragment {frag}"

    examples = _parse(path, "EXAMPLES", docs["EXAMPLES"])
    assert isinstance(examples, list) and examples, f"{path.name}: EXAMPLES must be a non-empty list of tasks"
    assert f"{FQCN}.{path.stem}" in docs["EXAMPLES"], f"{path.name}: EXAMPLES should call {FQCN}.{path.stem} by FQCN"

    returns = _parse(path, "RETURN", docs["RETURN"])
    assert returns is None or isinstance(returns, dict), f"{path.name}: RETURN must be a YAML mapping"
    for key, spec in (returns or {}).items():
        missing = [k for k in ("description", "returned", "type") if not (isinstance(spec, dict) and spec.get(k))]
        assert not missing, f"{path.name}: RETURN.{key} needs {', '.join(missing)}"


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_file_conventions(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/python\n"), f"{path.name}: first line must be #!/usr/bin/python"
    assert not path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH), f"{path.name} must not be executable"
    tree, _docs = _doc_strings(path)
    guarded = any(
        isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)
        for node in tree.body
    )
    assert guarded, f"{path.name}: call main() under if __name__ == '__main__':"


# ------------------------------------------------------------------------------------- roles

@pytest.mark.parametrize("role", ROLES, ids=[p.name for p in ROLES])
def test_role_argument_specs(role):
    candidates = [role / "meta" / "argument_specs.yml", role / "meta" / "argument_specs.yaml"]
    spec_file = next((c for c in candidates if c.is_file()), None)
    assert spec_file, f"role {role.name} has no meta/argument_specs.yml"
    specs = (_load_yaml(spec_file) or {}).get("argument_specs")
    assert isinstance(specs, dict) and "main" in specs, f"{spec_file}: argument_specs.main is missing"
    for entry_point, spec in specs.items():
        assert (role / "tasks" / f"{entry_point}.yml").is_file() or (role / "tasks" / f"{entry_point}.yaml").is_file(), \
            f"role {role.name}: entry point {entry_point} has no tasks/{entry_point}.yml"
        assert spec.get("short_description"), f"{spec_file}: {entry_point}.short_description is missing"
        for opt, opt_spec in (spec.get("options") or {}).items():
            assert isinstance(opt_spec, dict) and opt_spec.get("description"), \
                f"{spec_file}: {entry_point}.options.{opt} needs a description"
