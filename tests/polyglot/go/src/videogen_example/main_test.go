package main

// The Go client (main.go, the README's snippet) against the real
// videogen-server on its simulator. run_go_tests.py starts two servers and
// sets:
//
//	VIDEOGEN_ADDRESS, VIDEOGEN_API_KEY                  jobs complete
//	VIDEOGEN_FAILING_ADDRESS, VIDEOGEN_FAILING_API_KEY  every job fails

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	videogenv1 "github.com/videogen/videogen/gen/go/videogen/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const timeout = 60 * time.Second

func mustEnv(t *testing.T, name string) string {
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set (run through run_go_tests.py)", name)
	}
	return v
}

// client connects to the server named by addressVar and returns a context
// that carries the key named by keyVar.
func client(t *testing.T, addressVar, keyVar string) (context.Context, videogenv1.VideoGenerationClient) {
	conn, c, err := connect(mustEnv(t, addressVar))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return withAPIKey(ctx, mustEnv(t, keyVar)), c
}

func collect(events *[]*videogenv1.GenerationEvent) func(*videogenv1.GenerationEvent) {
	return func(e *videogenv1.GenerationEvent) { *events = append(*events, e) }
}

// assertRising checks that non-heartbeat revisions start after `after` and
// strictly increase: nothing repeated, nothing out of order.
func assertRising(t *testing.T, events []*videogenv1.GenerationEvent, after int64) {
	t.Helper()
	last := after
	n := 0
	for _, e := range events {
		if e.GetType() == videogenv1.GenerationEvent_TYPE_HEARTBEAT {
			continue
		}
		n++
		if r := e.GetGeneration().GetRevision(); r <= last {
			t.Fatalf("revision %d after %d", r, last)
		} else {
			last = r
		}
	}
	if n == 0 {
		t.Fatal("no events")
	}
}

func TestGenerateStreamsToCompletion(t *testing.T) {
	ctx, c := client(t, "VIDEOGEN_ADDRESS", "VIDEOGEN_API_KEY")
	var events []*videogenv1.GenerationEvent
	final, err := generate(ctx, c, "a red fox running through fresh snow",
		newRequestID(), collect(&events))
	if err != nil {
		t.Fatal(err)
	}
	if events[0].GetType() != videogenv1.GenerationEvent_TYPE_SNAPSHOT ||
		events[0].GetGeneration().GetState() != videogenv1.Generation_STATE_QUEUED {
		t.Fatalf("first event %v %v", events[0].GetType(), events[0].GetGeneration().GetState())
	}
	assertRising(t, events, 0)
	sawGenerating := false
	for _, e := range events {
		sawGenerating = sawGenerating ||
			e.GetGeneration().GetState() == videogenv1.Generation_STATE_GENERATING
	}
	if !sawGenerating {
		t.Error("never saw STATE_GENERATING")
	}
	if final.GetState() != videogenv1.Generation_STATE_COMPLETED || !final.GetDone() {
		t.Fatalf("final %v done=%v", final.GetState(), final.GetDone())
	}
	if !strings.HasPrefix(final.GetVideo().GetUrl(), "http") {
		t.Errorf("video url %q", final.GetVideo().GetUrl())
	}
}

func TestResumeAfterADroppedStream(t *testing.T) {
	ctx, c := client(t, "VIDEOGEN_ADDRESS", "VIDEOGEN_API_KEY")
	dropCtx, drop := context.WithCancel(ctx)
	stream, err := c.Generate(dropCtx, &videogenv1.GenerateRequest{
		Prompt: "waves at dusk", RequestId: newRequestID()})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	drop() // the dropped stream
	seen := first.GetGeneration().GetRevision()

	var events []*videogenv1.GenerationEvent
	final, err := watch(ctx, c, first.GetGeneration().GetId(), seen, collect(&events))
	if err != nil {
		t.Fatal(err)
	}
	assertRising(t, events, seen)
	if final.GetId() != first.GetGeneration().GetId() ||
		final.GetState() != videogenv1.Generation_STATE_COMPLETED {
		t.Fatalf("final %s %v", final.GetId(), final.GetState())
	}

	// A terminal generation watched from 0 is one SNAPSHOT, then OK.
	var replay []*videogenv1.GenerationEvent
	if _, err := watch(ctx, c, final.GetId(), 0, collect(&replay)); err != nil {
		t.Fatal(err)
	}
	if len(replay) != 1 || replay[0].GetType() != videogenv1.GenerationEvent_TYPE_SNAPSHOT ||
		replay[0].GetGeneration().GetRevision() != final.GetRevision() {
		t.Fatalf("replay of a terminal generation: %v", replay)
	}
}

func TestSameRequestIDIsTheSameGeneration(t *testing.T) {
	ctx, c := client(t, "VIDEOGEN_ADDRESS", "VIDEOGEN_API_KEY")
	req := &videogenv1.GenerateRequest{Prompt: "a lighthouse", RequestId: newRequestID()}
	a, err := c.CreateGeneration(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.CreateGeneration(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if a.GetId() != b.GetId() {
		t.Fatalf("two generations for one request_id: %s %s", a.GetId(), b.GetId())
	}
}

func TestErrorModel(t *testing.T) {
	ctx, c := client(t, "VIDEOGEN_ADDRESS", "VIDEOGEN_API_KEY")
	_, err := generate(ctx, c, "   ", "", func(*videogenv1.GenerationEvent) {})
	if status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(status.Convert(err).Message(), "prompt") {
		t.Errorf("blank prompt: %v", err)
	}
	_, err = c.CreateGeneration(ctx, &videogenv1.GenerateRequest{Prompt: "ok", DurationSeconds: 7})
	if status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(status.Convert(err).Message(), "duration_seconds") {
		t.Errorf("duration 7: %v", err)
	}
	_, err = c.GetGeneration(ctx, &videogenv1.GetGenerationRequest{Id: "no-such-id"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("get unknown id: %v", err)
	}
	_, err = watch(ctx, c, "no-such-id", 0, func(*videogenv1.GenerationEvent) {})
	if status.Code(err) != codes.NotFound {
		t.Errorf("watch unknown id: %v", err)
	}

	// Without the key: UNAUTHENTICATED.
	bare, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err = c.CreateGeneration(bare, &videogenv1.GenerateRequest{Prompt: "a lighthouse"})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("no key: %v", err)
	}
	_, err = c.CreateGeneration(withAPIKey(bare, "vg_wrong_key"),
		&videogenv1.GenerateRequest{Prompt: "a lighthouse"})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("wrong key: %v", err)
	}
}

func TestFailedGenerationIsAnOKStream(t *testing.T) {
	ctx, c := client(t, "VIDEOGEN_FAILING_ADDRESS", "VIDEOGEN_FAILING_API_KEY")
	var events []*videogenv1.GenerationEvent
	final, err := generate(ctx, c, "a storm at sea", newRequestID(), collect(&events))
	if err != nil {
		t.Fatalf("a FAILED generation must end the stream OK, got %v", err)
	}
	assertRising(t, events, 0)
	if final.GetState() != videogenv1.Generation_STATE_FAILED || !final.GetDone() {
		t.Fatalf("final %v done=%v", final.GetState(), final.GetDone())
	}
	if final.GetError().GetReason() == "" || final.GetError().GetMessage() == "" {
		t.Fatalf("error without reason or message: %v", final.GetError())
	}
	if final.GetVideo().GetUrl() != "" {
		t.Errorf("a failed generation has a video: %q", final.GetVideo().GetUrl())
	}
}
