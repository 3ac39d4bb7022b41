"""The hardening roles as Ansible sees them, without a host: layout, typed arguments, builtin
modules only, templates that exist, a playbook that parses, and templates that render per host."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
ROLE_NAMES = ["os_hardening", "ssh_hardening", "firewall", "audit", "monitoring"]
BIN = Path(sys.executable).parent
TYPES = {bool: "bool", int: "int", str: "str", list: "list", dict: "dict"}
# ansible-core ships no collections: a role may only use these.
ALLOWED_PREFIX = "ansible.builtin."
TASK_KEYWORDS = {"name", "when", "loop", "loop_control", "register", "notify", "tags", "changed_when", "failed_when",
                 "args", "become", "vars", "ignore_errors", "no_log", "listen", "block", "rescue", "always"}


def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_HOME=str(tmp_path / "ansible"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible" / "tmp"),
               ANSIBLE_NOCOLOR="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def task_files(role: str) -> list[Path]:
    return [*sorted((ROLES / role / "tasks").glob("*.yml")), ROLES / role / "handlers" / "main.yml"]


def tasks_of(path: Path) -> list[dict[str, Any]]:
    found = []
    for task in load(path) or []:
        found.append(task)
        for key in ("block", "rescue", "always"):
            found.extend(task.get(key, []))
    return found


def module_of(task: dict[str, Any]) -> str:
    modules = [k for k in task if k not in TASK_KEYWORDS]
    assert len(modules) == 1, f"task {task.get('name')!r} names no single module: {modules}"
    return modules[0]


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_role_has_the_ordinary_layout(role: str) -> None:
    for part in ("defaults/main.yml", "tasks/main.yml", "handlers/main.yml", "meta/main.yml", "meta/argument_specs.yml"):
        assert (ROLES / role / part).is_file(), f"{role}: missing {part}"
    meta = load(ROLES / role / "meta" / "main.yml")
    assert meta["galaxy_info"]["role_name"] == role
    assert meta["dependencies"] == []


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_default_is_a_typed_documented_argument(role: str) -> None:
    defaults = load(ROLES / role / "defaults" / "main.yml")
    options = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options), f"{role}: defaults and argument_specs differ: {set(defaults) ^ set(options)}"
    for name, value in defaults.items():
        spec = options[name]
        assert spec["description"].strip(), f"{role}.{name}: no description"
        assert spec["type"] == TYPES[type(value)], f"{role}.{name}: spec type {spec['type']}, default {type(value).__name__}"
        if "default" in spec:
            assert spec["default"] == value, f"{role}.{name}: spec default differs from defaults/main.yml"
        assert name.startswith(f"{role}_") or (role == "monitoring" and name.startswith("monitoring_")), name


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_roles_use_builtin_modules_only(role: str) -> None:
    for path in task_files(role):
        for task in tasks_of(path):
            if "block" in task:
                continue
            module = module_of(task)
            assert module.startswith(ALLOWED_PREFIX), f"{path.relative_to(ROOT)}: {task.get('name')!r} uses {module}"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_templates_and_files_exist_and_are_used(role: str) -> None:
    used: set[str] = set()
    for path in task_files(role):
        for task in tasks_of(path):
            module = module_of(task) if "block" not in task else ""
            args = task.get(module)
            if isinstance(args, dict) and "src" in args and module in ("ansible.builtin.template", "ansible.builtin.copy"):
                kind = "templates" if module_of(task).endswith("template") else "files"
                src = str(args["src"])
                items = task.get("loop") or [None]
                for item in items:
                    name = src.replace("{{ item }}", str(item)) if item is not None else src
                    assert "{{" not in name, f"{role}: cannot resolve {src}"
                    assert (ROLES / role / kind / name).is_file(), f"{role}: {kind}/{name} missing"
                    used.add(f"{kind}/{name}")
    shipped = {str(p.relative_to(ROLES / role)) for kind in ("templates", "files")
               for p in (ROLES / role / kind).rglob("*") if p.is_file()}
    assert shipped <= used, f"{role}: unused templates/files {shipped - used}"
    # Templates are laid out like the target filesystem.
    for name in shipped:
        assert name.split("/", 1)[1].split("/")[0] in ("etc", "usr"), name


def test_every_task_has_a_name() -> None:
    for role in ROLE_NAMES:
        for path in task_files(role):
            for task in tasks_of(path):
                assert task.get("name"), f"{path.relative_to(ROOT)}: a task without a name"


SAMPLE_INVENTORY = {"all": {
    "vars": {"embassy_controller_address": "10.87.9.2", "embassy_warm_addresses": ["10.87.9.20", "10.87.9.21"],
             "embassy_mirror_url": "http://10.87.9.2:8080", "embassy_admin_users": ["admin"],
             "embassy_permit_root_login": "no", "embassy_state_name": "Estonia"},
    "children": {
        "home_state": {"hosts": {"home": {"ansible_host": "10.87.9.10"}}},
        "embassies": {"children": {"warm_embassies": {"hosts": {"enclave-de": {"ansible_host": "10.87.9.20"}}},
                                   "cold_embassies": {"hosts": {"enclave-ie": {"ansible_host": "10.87.9.22"}}}}}}}}


def test_site_playbook_parses_with_every_role(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump(SAMPLE_INVENTORY))
    res = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", str(inventory), str(ROLES / "site.yml")],
                         capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = subprocess.run([str(BIN / "ansible-playbook"), "--list-tasks", "-i", str(inventory), str(ROLES / "site.yml")],
                            capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120)
    assert listed.returncode == 0, listed.stderr
    for role in ROLE_NAMES:
        assert f"{role} : Validating arguments against arg spec 'main'" in listed.stdout, f"{role} has no argument check"


def render_firewall(tmp_path: Path, *hosts: str) -> dict[str, str]:
    """The nftables.conf the play would write for each of `hosts` (rendered locally, nothing applied), by host: one
    play over them all, each host with its own groups and variables, as the site play runs."""
    out = tmp_path / "nftables-{{ inventory_hostname }}.conf"
    play = tmp_path / "render.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": ",".join(hosts), "gather_facts": False, "connection": "local",
        "vars": {
            **load(ROLES / "firewall" / "defaults" / "main.yml"),
            "ansible_python_interpreter": sys.executable,
            "firewall_ssh_sources": "{{ [embassy_controller_address] }}",
            "firewall_postgres_sources": "{{ embassy_warm_addresses if 'home_state' in group_names else [] }}",
            "firewall_extra_rules": [{"proto": "tcp", "port": 8088, "sources": ["10.87.9.2"], "comment": "state service"}],
        },
        "tasks": [
            {"name": "render", "ansible.builtin.template": {
                "src": str(ROLES / "firewall" / "templates" / "etc" / "nftables.conf.j2"), "dest": str(out)}},
        ]}]))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump(SAMPLE_INVENTORY))
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(play)],
                         capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return {host: (tmp_path / f"nftables-{host}.conf").read_text() for host in hosts}


def test_firewall_opens_postgres_on_home_to_warm_embassies_only(tmp_path: Path) -> None:
    rendered = render_firewall(tmp_path, "home", "enclave-de", "enclave-ie")
    home = rendered["home"]
    assert "policy drop;" in home
    assert re.search(r"ip saddr \{ 10\.87\.9\.2 \} tcp dport 22 accept", home)
    assert re.search(r"ip saddr \{ 10\.87\.9\.20, 10\.87\.9\.21 \} tcp dport 5432 accept", home)
    for embassy in ("enclave-de", "enclave-ie"):
        text = rendered[embassy]
        assert "policy drop;" in text
        assert "dport 5432" not in text, f"{embassy} must not take PostgreSQL connections"
        assert re.search(r"ip saddr \{ 10\.87\.9\.2 \} tcp dport 22 accept", text)
    # Only the table the role owns is replaced: rules others keep in the namespace stay.
    assert "flush ruleset" not in home
