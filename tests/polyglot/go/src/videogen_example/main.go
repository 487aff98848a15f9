// Generate a video from Go through stubs generated from proto/:
//
//	protoc -I proto --go_out=$GOPATH/src --go-grpc_out=$GOPATH/src \
//	    proto/videogen/v1/video_generation.proto
//
// Tested with Debian 12's Go 1.19 and grpc-go 1.33 (GOPATH mode). On
// grpc-go 1.63 or newer, prefer grpc.NewClient(address,
// grpc.WithTransportCredentials(insecure.NewCredentials())).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"os"

	videogenv1 "github.com/videogen/videogen/gen/go/videogen/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// connect opens a plaintext channel (use TLS credentials in production).
func connect(address string) (*grpc.ClientConn, videogenv1.VideoGenerationClient, error) {
	conn, err := grpc.Dial(address, grpc.WithInsecure())
	if err != nil {
		return nil, nil, err
	}
	return conn, videogenv1.NewVideoGenerationClient(conn), nil
}

// withAPIKey sends "authorization: Bearer KEY" with every call made with
// the returned context (nothing when key is empty).
func withAPIKey(ctx context.Context, key string) context.Context {
	if key == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// newRequestID returns a random idempotency key. Keep it to retry a
// create safely.
func newRequestID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func printEvent(event *videogenv1.GenerationEvent) {
	g := event.GetGeneration()
	fmt.Println(event.GetType(), g.GetRevision(), g.GetState(), g.GetVideo().GetUrl())
}

// generate streams one generation to its end and returns the final
// Generation. Retrying with the same requestID never starts a second
// (billed) job.
func generate(ctx context.Context, client videogenv1.VideoGenerationClient,
	prompt, requestID string, onEvent func(*videogenv1.GenerationEvent)) (*videogenv1.Generation, error) {
	stream, err := client.Generate(ctx, &videogenv1.GenerateRequest{
		Prompt:    prompt,
		RequestId: requestID,
	})
	if err != nil {
		return nil, err
	}
	return follow(stream, onEvent)
}

// watch follows a generation; after a dropped stream, pass the last
// revision seen as afterRevision and nothing is repeated or missed.
func watch(ctx context.Context, client videogenv1.VideoGenerationClient,
	id string, afterRevision int64, onEvent func(*videogenv1.GenerationEvent)) (*videogenv1.Generation, error) {
	stream, err := client.WatchGeneration(ctx, &videogenv1.WatchGenerationRequest{
		Id:            id,
		AfterRevision: afterRevision,
	})
	if err != nil {
		return nil, err
	}
	return follow(stream, onEvent)
}

type eventStream interface {
	Recv() (*videogenv1.GenerationEvent, error)
}

// follow reads events until the stream ends. io.EOF is the OK end, also
// for a generation that FAILED (read its Error()); any other error is an
// RPC status: status.Code(err) is INVALID_ARGUMENT, NOT_FOUND,
// UNAUTHENTICATED, UNAVAILABLE (retry), ...
func follow(stream eventStream, onEvent func(*videogenv1.GenerationEvent)) (*videogenv1.Generation, error) {
	var last *videogenv1.Generation
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			return last, nil
		}
		if err != nil {
			return last, err
		}
		onEvent(event)
		if event.GetType() != videogenv1.GenerationEvent_TYPE_HEARTBEAT {
			last = event.GetGeneration()
		}
	}
}

func main() {
	address := os.Getenv("VIDEOGEN_ADDRESS")
	if address == "" {
		address = "127.0.0.1:50051"
	}
	conn, client, err := connect(address)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx := withAPIKey(context.Background(), os.Getenv("VIDEOGEN_API_KEY"))
	final, err := generate(ctx, client, "a red fox running through fresh snow",
		newRequestID(), printEvent)
	if err != nil {
		log.Fatalf("%v: %s", status.Code(err), status.Convert(err).Message())
	}
	if final.GetState() == videogenv1.Generation_STATE_FAILED {
		log.Fatalf("failed: %s: %s", final.GetError().GetReason(), final.GetError().GetMessage())
	}
	fmt.Println(final.GetState(), final.GetVideo().GetUrl())
}
