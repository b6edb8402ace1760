"""_start_task on the policy thread's loop (_PolicyLoop): a job's task whose
first step runs at once, with no Handle queued for it, and that is in every
other way the task asyncio would have made."""
import asyncio
import contextvars

import pytest

from portcullis._engine import JOB_TASK_NAME, _PolicyLoop, _start_task

var = contextvars.ContextVar("var", default="unset")


@pytest.fixture
def loop():
    loop = _PolicyLoop()
    yield loop
    loop.close()


def test_the_first_step_runs_at_once_in_the_task_and_queues_nothing(loop, monkeypatch):
    seen = {}
    queued = []  # what reached asyncio's own call_soon (a Handle each)
    base_call_soon = asyncio.base_events.BaseEventLoop.call_soon
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "call_soon",
                        lambda self, *a, **kw: queued.append(a) or base_call_soon(self, *a, **kw))

    async def job():
        seen["task"] = asyncio.current_task(loop)
        var.set("set in the job")  # in the task's own context, not the caller's
        return 42

    task = _start_task(loop, job())
    assert task.done() and task.result() == 42
    assert seen["task"] is task and task.get_name() == JOB_TASK_NAME
    assert queued == [] and not loop._ready and not loop._claiming and loop._claimed is None
    assert var.get() == "unset"
    assert asyncio.current_task(loop) is None  # left as it was found


def test_a_task_that_waits_goes_on_on_the_loop_and_can_time_itself_out(loop):
    async def job():
        async with asyncio.timeout(5):  # needs the current task, in the first step
            await asyncio.sleep(0.01)
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            return "timed out"

    # From a plain callback of the running loop, as _JobRunner.drain calls it.
    started = []
    loop.call_soon(lambda: started.append(_start_task(loop, job())))
    loop.call_soon(loop.stop)
    loop.run_forever()
    task = started[0]
    assert not task.done()
    assert loop.run_until_complete(task) == "timed out"


def test_other_call_soon_callers_are_untouched(loop):
    calls = []

    async def job():
        loop.call_soon(calls.append, "from the first step")  # queued as usual, after the step
        return None

    _start_task(loop, job())
    assert len(loop._ready) == 1 and calls == []
    loop.run_until_complete(asyncio.sleep(0))
    assert calls == ["from the first step"]


def test_a_task_factory_or_another_loop_gets_a_task_made_the_usual_way(loop):
    made = []

    def factory(loop, coro, **kw):
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kw)

    async def job():
        return "done"

    loop.set_task_factory(factory)
    task = _start_task(loop, job())
    assert made and task.done() and task.result() == "done"

    plain = asyncio.new_event_loop()
    try:
        task = _start_task(plain, job())
        assert task.done() and task.result() == "done" and not plain._ready
    finally:
        plain.close()


def test_a_coroutine_the_task_refuses_leaves_the_loop_as_it_was(loop):
    with pytest.raises(TypeError):
        _start_task(loop, "not a coroutine")
    assert not loop._claiming and loop._claimed is None
    handle = loop.call_soon(lambda: None)  # call_soon still queues
    assert loop._ready[-1] is handle


def test_get_debug_follows_set_debug(loop):
    # get_debug is answered in C (a method-wrapper set by set_debug), and still tells the truth.
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_first_step_tells_a_return_from_a_wait_without_stopiteration():
    from _portcullis_core import first_step

    async def returns():
        return "value"

    async def waits(future):
        return await future

    async def raises():
        raise KeyError("k")

    assert first_step(returns()) == (True, "value")
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        coro = waits(future)
        returned, yielded = first_step(coro)
        assert returned is False and yielded is future  # what a task would wait for
        coro.close()
    finally:
        loop.close()
    with pytest.raises(KeyError):
        first_step(raises())

    class Awaitable:  # a plain iterator from __await__ (no send method)
        def __await__(self):
            return iter(())

    assert first_step(Awaitable().__await__()) == (True, None)


# _run_eagerly: no task for a job that does not suspend; the loop's spare task
# (the carrier) is current during the step and carries on a job that does.

def _run(loop, coro):
    from portcullis._engine import _enter_loop, _leave_loop, _run_eagerly
    _enter_loop(loop)  # as run_here has it: the running loop set, no task running
    try:
        return _run_eagerly(loop, coro)
    finally:
        _leave_loop()


async def value(v):
    return v


def test_a_job_that_does_not_suspend_makes_no_task_and_leaks_no_context(loop):
    seen = []

    async def job(n):
        seen.append(asyncio.current_task())
        var.set(f"job {n}")
        return n

    assert _run(loop, job(1)) == (True, 1)
    assert _run(loop, job(2)) == (True, 2)
    carrier = loop._carrier
    assert seen == [carrier, carrier] and not carrier.done()
    assert asyncio.all_tasks(loop) == {carrier}  # the spare only: no task per job
    assert var.get() == "unset" and asyncio.current_task(loop) is None
    assert not loop._ready


def test_a_job_that_suspends_goes_on_in_the_task_it_saw_with_its_context(loop):
    seen = {}

    async def job():
        seen["first"] = asyncio.current_task()
        var.set("mine")
        await asyncio.sleep(0.01)
        seen["later"] = (asyncio.current_task(), var.get())
        return "done"

    returned, task = _run(loop, job())
    assert returned is False and task is seen["first"] and task.get_name() == JOB_TASK_NAME
    assert loop._carrier is None and var.get() == "unset"
    assert loop.run_until_complete(task) == "done"
    assert seen["later"] == (task, "mine")
    assert _run(loop, value("next")) == (True, "next")  # a new spare for the next job
    assert loop._carrier is not None and loop._carrier is not task


def test_asyncio_timeout_across_a_suspension_cancels_the_carried_job(loop):
    async def job():
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            return "timed out"

    returned, task = _run(loop, job())
    assert returned is False
    assert loop.run_until_complete(task) == "timed out"


def test_a_job_that_cancels_its_own_task_ends_cancelled(loop):
    async def returns():
        asyncio.current_task().cancel()
        return "ignored"

    async def waits():
        asyncio.current_task().cancel()
        await asyncio.sleep(5)

    spare = loop._carrier or loop._new_carrier()
    with pytest.raises(asyncio.CancelledError):
        _run(loop, returns())
    assert spare.cancelled() and loop._carrier is None  # spent, finished: not left pending
    returned, task = _run(loop, waits())
    assert returned is False
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert task.cancelled()


def test_an_exception_in_the_step_propagates_and_the_spare_stays(loop):
    async def fails():
        raise KeyError("k")

    with pytest.raises(KeyError):
        _run(loop, fails())
    spare = loop._carrier
    assert spare is not None and not spare.done()
    assert _run(loop, value(1)) == (True, 1) and loop._carrier is spare


def test_closing_the_loop_finishes_the_spare(recwarn):
    loop = _PolicyLoop()
    _run(loop, value(0))
    spare = loop._carrier
    loop.close()
    assert spare.cancelled()
    del spare
    import gc
    gc.collect()
    assert not [w for w in recwarn if "pending" in str(w.message)]


def test_an_abandoned_carried_job_is_cancelled(loop):
    async def job():
        await asyncio.sleep(5)

    returned, task = _run(loop, job())
    loop.call_later(0.01, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_a_cancel_left_behind_by_an_ended_job_does_not_reach_the_next(loop):
    async def leaves_a_cancel():
        loop.call_soon(asyncio.current_task().cancel)  # its own task, after it ended
        return "first"

    assert _run(loop, leaves_a_cancel()) == (True, "first")
    loop.run_until_complete(asyncio.sleep(0))  # the cancel lands on the spare
    assert _run(loop, value("second")) == (True, "second")

    async def waits():
        await asyncio.sleep(0.001)
        return "third"

    assert _run(loop, leaves_a_cancel()) == (True, "first")
    loop.run_until_complete(asyncio.sleep(0))
    returned, task = _run(loop, waits())
    assert returned is False and loop.run_until_complete(task) == "third"
