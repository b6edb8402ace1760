"""The job starter's start_task (bindings/job_tasks.cpp) on the policy
thread's loop (_PolicyLoop): a job's task whose first step runs at once,
with no Handle queued for it, and that is in every other way the task
asyncio would have made."""
import asyncio
import contextvars

import pytest

from portcullis import _engine
from portcullis._engine import JOB_TASK_NAME, _PolicyLoop

var = contextvars.ContextVar("var", default="unset")


@pytest.fixture
def loop():
    loop = _PolicyLoop()
    yield loop
    loop.close()


def _start_task(loop, coro):
    """A task as _JobRunner starts a job's (its JobStarter's start_task)."""
    return _engine._JobRunner(_engine.EngineHost([]), loop, None, -1).start_task(coro)


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
    assert queued == [] and not loop._ready
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
    handle = loop.call_soon(lambda: None)  # call_soon still queues (the claim ended)
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
