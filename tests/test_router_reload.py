"""A request that reaches a student being retired by a reload is taken by the student that replaced it."""

import asyncio
from types import SimpleNamespace

from appliance.engine.scheduler import Scheduler
from appliance.engine.types import SamplingParams
from appliance.routing.router import ChatRequest, Router, Student

from .test_scheduler import CountingEngine


class ChatEngine(CountingEngine):
    """The counting engine with what the router asks of a student: a chat prompt and model info."""

    def __init__(self, first_token: int) -> None:
        super().__init__(parallel=2)
        self.first_token = first_token
        self.info = SimpleNamespace(n_ctx=256)

    def chat_prompt(self, messages):
        return [self.first_token, 1, 2]

    def piece(self, token):
        return b"x"


def student(name: str, first_token: int) -> Student:
    engine = ChatEngine(first_token)
    return Student(name, engine, Scheduler(engine, max_queue=4, name=name))


def test_a_request_caught_by_a_reload_is_answered_by_the_new_student():
    async def scenario():
        old = student("s", 100)
        router = Router({"s": old}, "s")
        request = ChatRequest([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2, temperature=0))
        # The request picked the old student, then the reload swapped students and closed the old one
        # before the request was submitted: the race a cache lookup's await leaves open.
        new = student("s", 500)
        original_prepare = router.prepare

        def prepare_then_reload(req):
            prepared = original_prepare(req)
            if prepared[0] is old:
                router.replace_students({"s": new}, "s")
                old.scheduler.close()
            return prepared

        router.prepare = prepare_then_reload
        run = await router.start(request)
        [event async for event in run.events()]  # the answer completes on the new student
        new.scheduler.close()
        return run, new, old

    run, new, old = asyncio.run(scenario())
    assert run.student is new
    assert new.engine.started == [500] and old.engine.started == []
