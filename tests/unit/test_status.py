"""The service state machine, alone: every rule of `service_state`."""

from modelport.orchestrator.status import InstanceView, service_state

W = [("r1", 2)]


def iv(status: str, slot: int = 0, rev: str = "r1", msg: str | None = None) -> InstanceView:
    return InstanceView(slot, rev, status, msg)


def test_all_ready_is_running() -> None:
    st = service_state("deploying", "running", W, [iv("ready"), iv("ready")])
    assert (st.status, st.progress, st.error_msg) == ("running", 100, None)


def test_deploying_while_instances_start_reports_progress() -> None:
    st = service_state("deploying", "running", W, [iv("ready"), iv("starting")])
    assert (st.status, st.progress) == ("deploying", 50)


def test_first_deploy_with_every_instance_failed_is_failed_with_reason() -> None:
    st = service_state(
        "deploying", "running", W, [iv("failed", msg="ImportError: x"), iv("failed", msg="ImportError: x")]
    )
    assert st.status == "failed"
    assert "ImportError" in (st.error_msg or "")


def test_crash_while_running_is_concerning_then_running_again() -> None:
    st = service_state("running", "running", W, [iv("ready"), iv("crashed", msg="exit -9")])
    assert st.status == "concerning"
    assert st.error_msg == "exit -9"
    assert service_state("concerning", "running", W, [iv("ready"), iv("ready")]).status == "running"


def test_partial_failure_after_deploy_is_concerning() -> None:
    st = service_state("deploying", "running", W, [iv("ready"), iv("failed", msg="boom")])
    assert (st.status, st.error_msg) == ("concerning", "boom")


def test_roll_in_progress_is_not_running_until_old_revision_is_gone() -> None:
    insts = [iv("ready", rev="old"), iv("ready"), iv("ready")]
    assert service_state("deploying", "running", W, insts).status != "running"
    assert (
        service_state("deploying", "running", W, [iv("ready"), iv("ready"), iv("stopped", rev="old")]).status
        == "running"
    )


def test_stop_and_delete() -> None:
    assert service_state("running", "stopped", W, [iv("draining")]).status == "stopping"
    assert service_state("stopping", "stopped", W, [iv("stopped")]).status == "stopped"
    assert service_state("running", "deleted", W, []).status == "deleting"


def test_two_slots_count_separately() -> None:
    wanted = [("a", 1), ("b", 1)]
    insts = [iv("ready", 0, "a"), iv("starting", 1, "b")]
    assert service_state("deploying", "running", wanted, insts).progress == 50
    insts = [iv("ready", 0, "a"), iv("ready", 1, "b")]
    assert service_state("deploying", "running", wanted, insts).status == "running"
