"""What Litestream is handed: each DB's replica URL (an s3:// query string kept at the end) and an environment
holding the allow-list plus the credentials of the replica's own object store, nothing else of the caller's."""

from __future__ import annotations

from toolkit.tracker import replica

CALLER = {
    "PATH": "/usr/bin",
    "HOME": "/home/me",
    "SSL_CERT_FILE": "/etc/ssl/mine.pem",
    "AWS_ACCESS_KEY_ID": "AKIA",
    "AWS_SECRET_ACCESS_KEY": "s3-secret",
    "AWS_CA_BUNDLE": "/etc/ssl/mine.pem",
    "GOOGLE_APPLICATION_CREDENTIALS": "/home/me/sa.json",
    "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023",
    "SSH_AUTH_SOCK": "/run/agent.sock",
    "GITHUB_TOKEN": "ghp_x",
    "PULUMI_CONFIG_PASSPHRASE": "pp",
}


def test_each_db_has_its_folder_before_the_query_string():
    assert replica.db_url("gs://b/replica/dev/", "mlflow.db") == "gs://b/replica/dev/mlflow.db"
    assert replica.db_url("file:///srv/replica", "optuna.db") == "file:///srv/replica/optuna.db"
    url = "s3://b/replica/dev?endpoint=http://127.0.0.1:9000&region=us-east-1"
    assert (
        replica.db_url(url, "mlflow.db")
        == "s3://b/replica/dev/mlflow.db?endpoint=http://127.0.0.1:9000&region=us-east-1"
    )


def test_an_s3_replica_gets_the_aws_keys_and_nothing_of_gcp():
    env = replica.environment("s3://b/r?endpoint=http://h:9000", CALLER)
    assert env["AWS_ACCESS_KEY_ID"] == CALLER["AWS_ACCESS_KEY_ID"]
    assert env["AWS_SECRET_ACCESS_KEY"] == CALLER["AWS_SECRET_ACCESS_KEY"]
    assert env["PATH"] == "/usr/bin" and env["SSL_CERT_FILE"] == "/etc/ssl/mine.pem"
    # AWS_CA_BUNDLE stops Litestream's S3 client (tests/labs/local/test_replica_remote.py shows it).
    for name in ("AWS_CA_BUNDLE", "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "GITHUB_TOKEN"):
        assert name not in env


def test_a_gs_replica_gets_the_gcp_credentials_and_nothing_of_aws():
    env = replica.environment("gs://b/replica/dev", CALLER)
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/home/me/sa.json"
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"  # Litestream's Go client takes either form
    assert not any(name.startswith("AWS_") for name in env)


def test_file_and_unknown():
    assert set(replica.environment("file:///srv/replica", CALLER)) == {"PATH", "HOME", "SSL_CERT_FILE"}
    every = replica.environment(None, CALLER)
    assert {"AWS_ACCESS_KEY_ID", "GOOGLE_APPLICATION_CREDENTIALS"} <= set(every)
    assert "SSH_AUTH_SOCK" not in every  # no replica store reads the SSH agent
    assert not {"GITHUB_TOKEN", "PULUMI_CONFIG_PASSPHRASE", "AWS_CA_BUNDLE"} & set(every)


def test_the_configured_sync_interval_reaches_litestreams_configuration(tmp_path):
    """lab:replicaSyncInterval becomes each DB's sync-interval; the WAL is still looked at every second at least."""
    import json

    def dbs(**kwargs) -> list[dict]:
        return json.loads(replica.config(tmp_path, "gs://b/replica/dev", retention_days=1, addr="x:1", **kwargs))["dbs"]

    assert {(d["monitor-interval"], d["replica"]["sync-interval"]) for d in dbs()} == {("250ms", "250ms")}
    assert {(d["monitor-interval"], d["replica"]["sync-interval"]) for d in dbs(sync_interval="10s")} == {("1s", "10s")}
