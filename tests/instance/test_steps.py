"""Each step of `slapos node instance` driven alone (docs/architecture-grid.md): plan, build's
profile, activate's revive, probe's due list and record, on a real node (real proxy, real
buildout for the first deployment, real supervisord)."""
from __future__ import annotations

import dataclasses
import re

from slapos.grid import probe, record
from slapos.grid.activate import Activator
from slapos.grid.build import Builder
from slapos.grid.job import InstanceOptions, RunContext, Step
from slapos.grid.plan import Planner, fetch
from tests.conftest import wait_for
from tests.fixtures.supervisor import stop_supervisor


def deployed(instance_node):
    node = instance_node(partitions=1)
    partition_id = node.request(node.install("cheap"), "cheap")
    assert node.instance() == 0
    return node, partition_id


def planned(node, partition_id, **options):
    ctx = RunContext(node.settings(), InstanceOptions(now=True, **options))
    jobs = Planner(ctx).plan(fetch(ctx))
    return ctx, next(job for job in jobs if job.id == partition_id)


def test_plan_alone_decides_from_local_files(instance_node):
    node, partition_id = deployed(instance_node)
    state_file = node.partition(partition_id).path / ".slapgrid" / "state.json"
    before = state_file.stat().st_mtime_ns
    ctx, job = planned(node, partition_id)
    assert job.step is Step.CHECK and ctx.summary.up_to_date == 1
    assert state_file.stat().st_mtime_ns == before  # planning writes nothing
    assert planned(node, partition_id, force=True)[1].step is Step.PROCESS
    # the master asks something new: a new timestamp means a new deployment
    changed = dataclasses.replace(job.desired, timestamp="1")
    assert Planner(ctx).plan([changed])[0].step is Step.PROCESS


def test_plan_deploys_again_when_the_node_certificate_changes(instance_node, tmp_path):
    """A node registered again (a new computer certificate, docs/join.md) processes every
    partition, which fetches its partition certificate anew; a node without one is unchanged."""
    from slapos.grid.node_identity import identity_stamp

    node, partition_id = deployed(instance_node)
    ctx, job = planned(node, partition_id)
    assert job.step is Step.CHECK and identity_stamp(None) == ""
    certificate = tmp_path / "computer.crt"
    certificate.write_text("-----BEGIN CERTIFICATE-----\none\n")
    ctx.settings = dataclasses.replace(ctx.settings, cert_file=certificate, key_file=certificate)
    assert Planner(ctx).plan([job.desired])[0].step is Step.PROCESS
    before = identity_stamp(certificate)
    certificate.write_text("-----BEGIN CERTIFICATE-----\ntwo\n")
    assert identity_stamp(certificate) not in ("", before)


def test_a_computer_certificate_near_its_end_is_a_warning_of_every_run(tmp_path, caplog):
    from slapos.grid.node_identity import identity_stamp
    from slapos.proxy.ca import CertificateAuthority

    authority = CertificateAuthority(tmp_path / "ca").load_or_create("test")
    certificate = tmp_path / "computer.crt"
    certificate.write_text(authority.issue("twon-a", "computer", days=365).certificate)
    with caplog.at_level("WARNING", logger="slapos"):
        identity_stamp(certificate)
    assert not [r for r in caplog.records if "expires" in r.getMessage()]
    certificate.write_text(authority.issue("twon-a", "computer", days=5).certificate)
    with caplog.at_level("WARNING", logger="slapos"):
        identity_stamp(certificate)
    assert any(re.search(rf"{certificate} expires in [45] days: .*slapos node register", r.getMessage())
               for r in caplog.records)


def test_the_expiry_date_is_read_as_cryptography_reads_it(tmp_path):
    """node_identity walks the DER itself (importing cryptography costs more than a no-change
    run): the same date for our CA's certificates (UTCTime), an RSA one past 2049
    (GeneralizedTime), a chain (its first); none for what is not a certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from slapos.grid.node_identity import not_after
    from slapos.proxy.ca import CertificateAuthority

    def expected(pem: bytes) -> float:
        cert = x509.load_pem_x509_certificate(pem)
        after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
        return after.timestamp()

    authority = CertificateAuthority(tmp_path / "ca").load_or_create("test")
    ours = authority.issue("twon-a", "computer").certificate.encode()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "far")])
    far = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(x509.random_serial_number())
           .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
           .not_valid_after(datetime.datetime(2061, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc))
           .sign(key, hashes.SHA256()))
    far_pem = far.public_bytes(serialization.Encoding.PEM)
    for pem in (ours, far_pem, ours + far_pem):
        assert not_after(pem) == expected(pem)
    assert not_after(far_pem) == datetime.datetime(2061, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc).timestamp()
    begin, end = b"-----BEGIN CERTIFICATE-----\n", b"\n-----END CERTIFICATE-----\n"
    for junk in (b"", b"not a certificate", ours[:120], begin + b"MIIB" + end, begin + b"@@@@" + end):
        assert not_after(junk) is None, junk  # never an exception, never a date


def test_build_alone_renders_the_profile_tail(instance_node):
    node, partition_id = deployed(instance_node)
    ctx, job = planned(node, partition_id)
    profile = Builder(ctx).render_profile(job, "[buildout]\nparts =\n")
    assert profile.startswith("[buildout]\nparts =\n")
    assert f"partition-id = {partition_id}\n" in profile
    assert f"computer-id = {node.computer_id}\n" in profile
    assert f"software-release-url = {job.desired.software_release_url}\n" in profile


def test_record_alone_keeps_a_failure_then_a_success(instance_node):
    node, partition_id = deployed(instance_node)
    partition = node.partition(partition_id)
    ctx, job = planned(node, partition_id)
    job.error = "boom"
    record.record(ctx, job)
    assert ctx.summary.failed == {partition_id: "boom"}
    state = partition.load_state()
    assert state.status == "error" and state.last_error == "boom" and state.failures == 1
    assert partition.error_log_path.read_text().strip() == "boom"
    assert partition.read_timestamp()[0] is None  # the next run deploys again

    ctx, job = planned(node, partition_id, force=True)
    record.record(ctx, job)
    state = partition.load_state()
    assert state.status == "ok" and state.last_error is None and state.inputs == job.inputs
    assert partition.read_timestamp()[0] == job.desired.timestamp
    assert ctx.summary.processed == [partition_id] and not ctx.summary.failed


def test_probe_alone_lists_only_the_due_partitions(instance_node):
    node, partition_id = deployed(instance_node)
    ctx, job = planned(node, partition_id)
    job.state.next_promise_check = ctx.clock() + 3600
    assert probe.due(ctx, [job]) == []
    job.state.next_promise_check = ctx.clock() - 1
    assert probe.due(ctx, [job]) == [job]
    work = probe.prepare_checks(ctx, [job])
    [(checked, _runner, _promises, results)] = probe.check(ctx, work)
    assert checked is job and results and not any(r.failed for r in results)


def test_activate_alone_revives_a_stopped_supervisord(instance_node):
    node, partition_id = deployed(instance_node)
    stop_supervisor(node.settings())
    ctx, job = planned(node, partition_id)
    started = Activator(ctx).revive([(job.partition, job.state)])
    assert started.get(partition_id), started
    wait_for(lambda: {i["statename"] for i in node.processes(partition_id).values()} == {"RUNNING"},
             what="the revived services running")
