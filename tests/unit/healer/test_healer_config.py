"""The `healer:` section: defaults, located errors, no webhook open to the network by accident."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from exporter.base.errors import ConfigError
from exporter.config import Config, load_config
from healer.app import create_app
from healer.auth import Authenticator
from healer.config import AuthSettings, check_serving_auth, load_healer_config
from healer.journal.pool import journal_dsn
from tests.support.ingest_helpers import TOKEN, config_for


def test_defaults_follow_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "taskmedic.yaml"
    path.write_text("healer: {auth: {bearer_token: t}}\n")
    h = load_healer_config(path).healer
    assert h.listen == "127.0.0.1:9809"
    assert h.journal is None
    assert h.data_dir == Path(".taskmedic")
    assert (h.max_body, h.output_cap) == (1 << 20, 1 << 20)
    assert (h.lease, h.approval_timeout, h.shutdown_grace) == (30.0, 3600.0, 30.0)
    assert h.log_retention == 30 * 86400.0
    assert h.executor_concurrency == 4
    assert not h.dry_run


def test_healer_section_errors_are_located(tmp_path: Path) -> None:
    path = tmp_path / "taskmedic.yaml"
    path.write_text(
        "healer:\n"
        "  listen: nowhere\n"
        "  max_body: lots\n"
        "  auth:\n"
        "    bearer_tokn: t\n"
        "  journal: {dsn: 'mysql://u@h/db'}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_healer_config(path)
    text = str(exc.value)
    assert f"{path}:2: healer.listen: expected host:port" in text
    assert f"{path}:3: healer.max_body: expected a size such as 1MiB" in text
    assert f"{path}:5: healer.auth.bearer_tokn: unknown key" in text


def test_the_exporter_alone_reads_the_shared_file_and_leaves_the_healer_section_to_the_healer(
    tmp_path: Path,
) -> None:
    """One file for both programs: the exporter's model skips `healer:` unread (even a section
    the healer refuses), still refuses any other unknown key, and the healer's model validates
    the section with its line."""
    path = tmp_path / "taskmedic.yaml"
    path.write_text("databases: {app: {dsn: 'postgresql://u@h/db'}}\nhealer:\n  listen: 9809\n")
    config = load_config(path)
    assert type(config) is Config
    assert "healer" not in config.display()
    with pytest.raises(ConfigError, match=f"{path}:3: healer.listen: expected host:port"):
        load_healer_config(path)
    path.write_text("databases: {}\nhealr: {}\n")
    with pytest.raises(ConfigError, match=f"{path}:2: healr: unknown key"):
        load_config(path)


def test_config_check_shows_the_healer_section_with_every_secret_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from healer.cli import main

    path = tmp_path / "taskmedic.yaml"
    path.write_text(
        "healer:\n"
        "  journal: {dsn: 'postgresql://j:journal-secret@h/journal'}\n"
        "  auth:\n"
        "    bearer_token: token-secret\n"
        "    basic_auth: {username: ops, password: basic-secret}\n"
        "    session_secret: session-secret\n"
    )
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)["healer"]
    assert shown["listen"] == "127.0.0.1:9809"
    assert shown["lease"] == "30s"
    assert shown["approval_timeout"] == "1h"
    assert shown["journal"]["dsn"] == "postgresql://j:***@h/journal"
    assert shown["auth"]["bearer_token"] == "***"
    assert shown["auth"]["basic_auth"] == {"username": "ops", "password": "***"}
    for secret in ("journal-secret", "token-secret", "basic-secret", "session-secret"):
        assert secret not in out


def test_token_file_is_read_and_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    path = tmp_path / "taskmedic.yaml"
    path.write_text(f"healer: {{auth: {{bearer_token_file: {secret}}}}}\n")
    config = load_healer_config(path)
    assert config.healer.auth.secret_token() == "from-a-file"
    assert "from-a-file" not in repr(config)


def test_no_credentials_refuses_to_serve(tmp_path: Path) -> None:
    config = config_for(tmp_path, None, healer={"auth": {}})
    with pytest.raises(ConfigError, match="no credentials configured"):
        check_serving_auth(config)
    with pytest.raises(ConfigError):
        create_app(config)


def test_unauthenticated_is_allowed_on_loopback_only(tmp_path: Path) -> None:
    config = config_for(
        tmp_path, None, healer={"auth": {"allow_unauthenticated": True}, "listen": "0.0.0.0:9809"}
    )
    with pytest.raises(ConfigError, match="loopback") as exc:
        check_serving_auth(config)
    assert str(exc.value).startswith(f"{tmp_path / 'taskmedic.yaml'}:")
    check_serving_auth(config, "127.0.0.1:9809")
    check_serving_auth(config, "[::1]:9809")
    check_serving_auth(config, "localhost:9809")


def test_unauthenticated_cannot_be_mixed_with_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be combined"):
        config_for(
            tmp_path, None, healer={"auth": {"allow_unauthenticated": True, "bearer_token": "t"}}
        )


def test_credentials_carry_roles_and_alertmanagers_never_approves() -> None:
    """The token posts alerts only unless told it may read; a user reads by default, and
    approving implies reading. Wrong secrets and unknown names give nobody."""
    settings = AuthSettings.model_validate(
        {
            "bearer_token": TOKEN,
            "basic_auth": {"username": "am", "password": "am-pw"},
            "users": [
                {"name": "rita", "password": "r"},
                {"name": "alice", "password": "a", "roles": ["approve"]},
            ],
        }
    )
    auth = Authenticator(settings)
    token = auth.verify_token(TOKEN)
    assert token is not None
    assert token.roles == {"post_alerts"}
    am = auth.verify_password("am", "am-pw")
    assert am is not None
    assert am.roles == {"post_alerts"}
    rita = auth.verify_password("rita", "r")
    assert rita is not None
    assert rita.roles == {"read"}
    alice = auth.verify_password("alice", "a")
    assert alice is not None
    assert alice.name == "alice"
    assert alice.roles == {"approve", "read"}
    assert auth.verify_token(TOKEN + "x") is None
    assert auth.verify_password("alice", "r") is None
    assert auth.verify_password("nobody", "a") is None
    assert auth.login_fields() == (False, True)  # the token may not read: no token field
    reader = Authenticator(
        AuthSettings.model_validate(
            {"bearer_token": TOKEN, "alertmanager_roles": ["post_alerts", "read"]}
        )
    )
    assert reader.login_fields() == (True, False)


def test_alertmanagers_credential_cannot_be_given_the_approve_role(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"alertmanager_roles\[1\]: Input should be .post_alerts. or .read."
    ):
        config_for(
            tmp_path,
            None,
            healer={
                "auth": {"bearer_token": "t", "alertmanager_roles": ["post_alerts", "approve"]}
            },
        )


def test_users_need_unique_names_and_a_password_and_never_show_it(tmp_path: Path) -> None:
    secret = tmp_path / "alice-password"
    secret.write_text("from-a-file\n")
    users = [{"name": "alice", "password_file": str(secret), "roles": ["approve"]}]
    config = config_for(tmp_path, None, healer={"auth": {"users": users}})
    [alice] = config.healer.auth.users
    assert alice.secret_password() == "from-a-file"
    shown = str(config.display())
    assert "from-a-file" not in shown
    assert "'roles': ['approve']" in shown
    with pytest.raises(ConfigError, match="given twice"):
        config_for(
            tmp_path,
            None,
            healer={"auth": {"users": users, "basic_auth": {"username": "alice", "password": "x"}}},
        )
    with pytest.raises(ConfigError, match="'token' is reserved"):
        config_for(tmp_path, None, healer={"auth": {"users": [{"name": "token", "password": "p"}]}})
    with pytest.raises(ConfigError, match="exactly one of password or password_file"):
        config_for(tmp_path, None, healer={"auth": {"users": [{"name": "bob"}]}})
    with pytest.raises(ConfigError, match=r"users\[0\]\.name"):
        config_for(tmp_path, None, healer={"auth": {"users": [{"name": "a b", "password": "p"}]}})
    with pytest.raises(ConfigError, match=r"users\[0\]\.roles\[0\]"):
        config_for(
            tmp_path,
            None,
            healer={"auth": {"users": [{"name": "bob", "password": "p", "roles": ["root"]}]}},
        )


def test_trusted_proxies_are_networks(tmp_path: Path) -> None:
    config = config_for(
        tmp_path,
        None,
        healer={"auth": {"bearer_token": "t", "trusted_proxies": ["10.0.0.0/8", "::1"]}},
    )
    assert [str(n) for n in config.healer.auth.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError, match="trusted_proxies"):
        config_for(
            tmp_path, None, healer={"auth": {"bearer_token": "t", "trusted_proxies": ["nope"]}}
        )


async def test_journal_password_file_is_applied_to_the_journal_dsn(tmp_path: Path) -> None:
    secret = tmp_path / "journal-password"
    secret.write_text("s3cr3t\n")
    config = config_for(
        tmp_path,
        None,
        healer={
            "journal": {
                "dsn": "postgresql://healer@db.internal/journal",
                "password_file": str(secret),
            }
        },
    )
    async with journal_dsn(config) as dsn:
        info = conninfo_to_dict(dsn)
    assert (info["user"], info["host"], info["password"]) == ("healer", "db.internal", "s3cr3t")
