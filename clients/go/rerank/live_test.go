package rerank

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/matryoshka-rerank/matryoshka-rerank/clients/go/matryoshka/v1"
)

// These tests call a real server at $MATRYOSHKA_TARGET (tests/integration/test_clients.py sets it).

var liveDocs = []string{
	"The speed of light in vacuum is about 300,000 km per second.",
	"Bananas are rich in potassium.",
	"Romeo and Juliet is a tragedy written by William Shakespeare early in his career.",
	"The stock market fell sharply on Monday.",
}

func liveClient(t *testing.T) *Client {
	t.Helper()
	target := os.Getenv("MATRYOSHKA_TARGET")
	if target == "" {
		t.Skip("MATRYOSHKA_TARGET not set: no live server")
	}
	client, err := Dial(target, Options{Timeout: time.Minute, Token: "not-checked-yet"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func TestLiveRerankRanksTheAnswerFirst(t *testing.T) {
	client := liveClient(t)
	req := NewRequest("who wrote romeo and juliet", liveDocs...)
	req.Budget = LatencyBudget(60 * time.Second)
	req.RequestId = "go-1"
	req.CacheMode = pb.CacheMode_CACHE_MODE_BYPASS // computed, not a hit from an earlier test's request
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	resp, err := client.Rerank(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != len(liveDocs) || resp.Results[0].Index != 2 {
		t.Fatalf("want document 2 first of %d, got %v", len(liveDocs), resp.Results)
	}
	if resp.RequestId != "go-1" || resp.Partial || resp.Usage.GetFlops() <= 0 {
		t.Errorf("response: request id %q, partial %t, usage %v", resp.RequestId, resp.Partial, resp.Usage)
	}
}

func TestLiveBadRequestNamesTheFields(t *testing.T) {
	client := liveClient(t)
	req := NewRequest("   ", liveDocs...)
	req.TopN = -1
	_, err := client.Rerank(context.Background(), req)
	e, ok := AsError(err)
	if !ok || e.Code != codes.InvalidArgument {
		t.Fatalf("want INVALID_ARGUMENT, got %v", err)
	}
	fields := map[string]bool{}
	for _, v := range e.FieldViolations {
		fields[v.Field] = v.Description != ""
	}
	if !fields["query"] || !fields["top_n"] {
		t.Errorf("want violations of query and top_n, got %v", e.FieldViolations)
	}
}

func TestLiveModelInfoAndHealth(t *testing.T) {
	client := liveClient(t)
	ctx := context.Background()
	models, err := client.ModelInfo(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(models) == 0 || !models[0].IsDefault || models[0].NumLayers <= 0 || len(models[0].HeadLayers) == 0 {
		t.Fatalf("model info: %v", models)
	}
	for _, service := range []string{"", "matryoshka.v1.RerankService"} {
		got, err := client.Health(ctx, service)
		if err != nil || got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", service, got, err)
		}
	}
	if _, err := client.ModelInfo(ctx, "no-such-model"); !isCode(err, codes.NotFound) {
		t.Errorf("unknown model: want NOT_FOUND, got %v", err)
	}
}

func isCode(err error, code codes.Code) bool {
	e, ok := AsError(err)
	return ok && e.Code == code
}
