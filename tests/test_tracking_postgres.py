"""A real `mlflow server` on a PostgreSQL backend (Debian's `postgresql`, started by the test, as the cluster's MLflow
runs on k8s/base/postgres.yaml) records a study run by `crossover run`, and `crossover analyze` reads it back."""

from __future__ import annotations

import subprocess

import pytest

from .services import POSTGRES, mlflow_server, postgres_server
from .test_platform import CROSSOVER, run, runs

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)


def test_an_mlflow_server_on_postgresql_records_a_study_and_analyze_reads_it(study, tmp_path):
    import psycopg2

    spec = study["write"](train={"total_tokens": 12288}, eval={"every": "log:2"})
    with postgres_server() as backend, mlflow_server(tmp_path / "mlflow", backend_uri=backend) as url:
        result = run({**study, "uri": url}, spec)
        assert result.returncode == 0, result.stdout + result.stderr
        _, parents, children = runs(url)
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert sorted((c.info.run_name, c.info.status) for c in children) == [
            ("ar-U10k-nano-s0", "FINISHED"),
            ("mdlm-U10k-nano-s0", "FINISHED"),
        ]
        database = backend.replace(POSTGRES, "postgresql://")  # the records are in PostgreSQL
        with psycopg2.connect(database) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs")
            assert cursor.fetchone()[0] == 3
        report = subprocess.run(
            [*CROSSOVER, "analyze", "tiny", "--tracking-uri", url, "--out", str(tmp_path / "report")],
            env=study["env"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert report.returncode == 0 and (tmp_path / "report" / "report.html").is_file(), report.stderr[-3000:]
        assert "unique_tokens=10k" in report.stdout, report.stdout
