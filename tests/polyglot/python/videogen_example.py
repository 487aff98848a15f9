"""Generate a video from Python through stubs generated from proto/.

    protoc -I proto --python_out=. --grpc_out=. \
        --plugin=protoc-gen-grpc="$(which grpc_python_plugin)" \
        proto/videogen/v1/video_generation.proto

Every call carries your API key (`videogen-server keys create --tenant=NAME`
prints one) as `authorization: Bearer KEY`; here it comes from the
environment variable VIDEOGEN_API_KEY.
"""
import os

import grpc

from videogen.v1 import video_generation_pb2 as pb
from videogen.v1 import video_generation_pb2_grpc as pb_grpc


def connect(address="127.0.0.1:50051"):
    return pb_grpc.VideoGenerationStub(grpc.insecure_channel(address))


def auth(api_key=None):
    """The call metadata with the key (default: $VIDEOGEN_API_KEY)."""
    key = api_key or os.environ.get("VIDEOGEN_API_KEY")
    if not key:
        raise RuntimeError("set VIDEOGEN_API_KEY to your videogen API key")
    return [("authorization", f"Bearer {key}")]


def print_event(event):
    g = event.generation
    print(pb.GenerationEvent.Type.Name(event.type), g.revision,
          pb.Generation.State.Name(g.state), g.video.url)


def generate(stub, prompt, request_id="", on_event=print_event):
    """Streams one generation to its end and returns the final Generation.

    Retrying with the same request_id never starts a second (billed) job.
    """
    request = pb.GenerateRequest(prompt=prompt, request_id=request_id)
    return _follow(stub.Generate(request, metadata=auth()), on_event)


def watch(stub, generation_id, after_revision=0, on_event=print_event):
    """Follows a generation; after a dropped stream, pass the last revision
    seen as after_revision and nothing is repeated or missed."""
    request = pb.WatchGenerationRequest(id=generation_id,
                                        after_revision=after_revision)
    return _follow(stub.WatchGeneration(request, metadata=auth()), on_event)


def _follow(events, on_event):
    last = None
    for event in events:  # raises grpc.RpcError; e.code() says why
        on_event(event)
        if event.type != pb.GenerationEvent.TYPE_HEARTBEAT:
            last = event.generation
    return last


if __name__ == "__main__":
    final = generate(connect(), "a red fox running through fresh snow")
    print(pb.Generation.State.Name(final.state), final.video.url)
