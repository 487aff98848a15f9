"""Python client against the real videogen-server and videogen-sim, through
stubs generated at test time. Uses the README's snippet (videogen_example)."""
import os
import unittest
import uuid
from unittest import mock

import grpc

import harness

harness.generate_stubs()
import videogen_example  # noqa: E402  (needs the stubs on sys.path)
from videogen.v1 import video_generation_pb2 as pb  # noqa: E402

STACK = None
TIMEOUT_S = 60


def setUpModule():
    global STACK
    STACK = harness.Stack()
    # The example reads the key from the environment, as a user's script would.
    os.environ["VIDEOGEN_API_KEY"] = STACK.key


def tearDownModule():
    if STACK is not None:
        STACK.stop()


class StreamAssertions:

    def assert_rising(self, events, after=0):
        revisions = [e.generation.revision for e in events
                     if e.type != pb.GenerationEvent.TYPE_HEARTBEAT]
        self.assertTrue(revisions, "no events")
        self.assertGreater(revisions[0], after)
        self.assertEqual(revisions, sorted(set(revisions)), revisions)


class PolyglotPythonTest(StreamAssertions, unittest.TestCase):

    def setUp(self):
        self.channel = grpc.insecure_channel(STACK.address)
        self.stub = videogen_example.pb_grpc.VideoGenerationStub(self.channel)

    def tearDown(self):
        self.channel.close()

    def test_generate_streams_to_completion(self):
        events = []
        final = videogen_example.generate(
            self.stub, "a red fox running through fresh snow",
            request_id=str(uuid.uuid4()), on_event=events.append)
        self.assertEqual(events[0].type, pb.GenerationEvent.TYPE_SNAPSHOT)
        self.assertEqual(events[0].generation.state, pb.Generation.STATE_QUEUED)
        self.assert_rising(events)
        self.assertEqual(final.state, pb.Generation.STATE_COMPLETED)
        self.assertTrue(final.done)
        self.assertTrue(final.video.url.startswith("http"), final.video.url)
        states = {e.generation.state for e in events}
        self.assertIn(pb.Generation.STATE_GENERATING, states)

    def test_watch_resumes_after_revision(self):
        request = pb.GenerateRequest(prompt="waves at dusk",
                                     request_id=str(uuid.uuid4()))
        call = self.stub.Generate(request, timeout=TIMEOUT_S,
                                  metadata=videogen_example.auth())
        first = next(call)
        call.cancel()  # the "dropped" stream
        seen = first.generation.revision

        events = []
        final = videogen_example.watch(self.stub, first.generation.id,
                                       after_revision=seen,
                                       on_event=events.append)
        self.assert_rising(events, after=seen)
        self.assertEqual(final.id, first.generation.id)
        self.assertEqual(final.state, pb.Generation.STATE_COMPLETED)

        # A terminal generation watched from 0 is one SNAPSHOT, then OK.
        replay = []
        videogen_example.watch(self.stub, final.id, on_event=replay.append)
        self.assertEqual([e.type for e in replay],
                         [pb.GenerationEvent.TYPE_SNAPSHOT])
        self.assertEqual(replay[0].generation.revision, final.revision)

    def test_same_request_id_is_the_same_generation(self):
        request = pb.GenerateRequest(prompt="a lighthouse",
                                     request_id=str(uuid.uuid4()))
        a = self.stub.CreateGeneration(request, timeout=TIMEOUT_S,
                                       metadata=videogen_example.auth())
        b = self.stub.CreateGeneration(request, timeout=TIMEOUT_S,
                                       metadata=videogen_example.auth())
        self.assertEqual(a.id, b.id)
        # The same request_id from another tenant is another generation, and
        # neither tenant sees the other's.
        c = self.stub.CreateGeneration(
            request, timeout=TIMEOUT_S,
            metadata=videogen_example.auth(STACK.other_key))
        self.assertNotEqual(c.id, a.id)
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.GetGeneration(
                pb.GetGenerationRequest(id=a.id), timeout=TIMEOUT_S,
                metadata=videogen_example.auth(STACK.other_key))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_missing_or_unknown_key_is_unauthenticated(self):
        request = pb.GetGenerationRequest(id="no-such-id")
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.GetGeneration(request, timeout=TIMEOUT_S)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.GetGeneration(
                request, timeout=TIMEOUT_S,
                metadata=videogen_example.auth("vgk_not_a_real_key"))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertNotIn("vgk_not_a_real_key", cm.exception.details())
        # The example without any key at hand says what to do.
        saved = os.environ.pop("VIDEOGEN_API_KEY")
        try:
            with self.assertRaisesRegex(RuntimeError, "VIDEOGEN_API_KEY"):
                videogen_example.generate(self.stub, "no key",
                                          on_event=lambda e: None)
        finally:
            os.environ["VIDEOGEN_API_KEY"] = saved

    def test_invalid_request_is_invalid_argument(self):
        with self.assertRaises(grpc.RpcError) as cm:
            videogen_example.generate(self.stub, "   ", on_event=lambda e: None)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("prompt", cm.exception.details())

        bad = pb.GenerateRequest(prompt="ok", duration_seconds=7)
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.CreateGeneration(bad, timeout=TIMEOUT_S,
                                       metadata=videogen_example.auth())
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("duration_seconds", cm.exception.details())

    def test_unknown_id_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.GetGeneration(pb.GetGenerationRequest(id="no-such-id"),
                                    timeout=TIMEOUT_S,
                                    metadata=videogen_example.auth())
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as cm:
            videogen_example.watch(self.stub, "no-such-id",
                                   on_event=lambda e: None)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)


class FailedGenerationTest(StreamAssertions, unittest.TestCase):
    """A stack whose simulated upstream fails every job (--error_rate=1)."""

    @classmethod
    def setUpClass(cls):
        cls.stack = harness.Stack(sim_flags=["--error_rate=1"])

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def setUp(self):
        self.channel = grpc.insecure_channel(self.stack.address)
        self.stub = videogen_example.pb_grpc.VideoGenerationStub(self.channel)
        self.metadata = videogen_example.auth(self.stack.key)

    def tearDown(self):
        self.channel.close()

    def assert_failed(self, g):
        self.assertEqual(pb.Generation.State.Name(g.state), "STATE_FAILED")
        self.assertTrue(g.done)
        self.assertEqual(g.error.reason, "UPSTREAM_TASK_ERROR")
        self.assertEqual(g.error.code, grpc.StatusCode.INTERNAL.value[0])
        self.assertTrue(g.error.message.strip(), "empty error.message")
        # The upstream's own message is part of it.
        self.assertIn("The simulated model failed to render this prompt",
                      g.error.message)
        self.assertEqual(g.video.url, "")

    def test_failed_generation_is_an_ok_stream_with_error_reason(self):
        request = pb.GenerateRequest(prompt="a storm at sea",
                                     request_id=str(uuid.uuid4()))
        call = self.stub.Generate(request, timeout=TIMEOUT_S,
                                  metadata=self.metadata)
        events = list(call)  # an RPC error would raise here
        self.assertEqual(call.code(), grpc.StatusCode.OK, call.details())
        self.assertEqual(events[0].type, pb.GenerationEvent.TYPE_SNAPSHOT)
        self.assert_rising(events)
        # The stream ends right after the terminal event.
        final = events[-1]
        self.assertNotEqual(final.type, pb.GenerationEvent.TYPE_HEARTBEAT)
        self.assert_failed(final.generation)
        # Only the terminal event carries the error.
        for e in events[:-1]:
            self.assertNotEqual(e.generation.state,
                                pb.Generation.STATE_FAILED)
            self.assertFalse(e.generation.HasField("error"), e)

        # The README's watch() (key from the environment) replays it from 0
        # as one SNAPSHOT of the FAILED generation and returns, no RpcError.
        replay = []
        with mock.patch.dict(os.environ,
                             {"VIDEOGEN_API_KEY": self.stack.key}):
            watched = videogen_example.watch(self.stub, final.generation.id,
                                             on_event=replay.append)
        self.assertEqual([e.type for e in replay],
                         [pb.GenerationEvent.TYPE_SNAPSHOT])
        self.assertEqual(watched.revision, final.generation.revision)
        self.assert_failed(watched)


if __name__ == "__main__":
    unittest.main()
