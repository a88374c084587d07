package rerank

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/matryoshka-rerank/matryoshka-rerank/clients/go/matryoshka/v1"
)

// These tests call a real server at $MATRYOSHKA_TARGET, as live_test.go does.

// liveLongDocs are liveDocs with the answer (document 2) buried in the middle of a long text.
func liveLongDocs() []string {
	filler := strings.Repeat("Bananas are rich in potassium. ", 8) + strings.Repeat("The stock market fell sharply on Monday. ", 8)
	docs := append([]string(nil), liveDocs...)
	docs[2] = filler + "🎭 ¿Qué? " + liveDocs[2] + " " + filler // non-ASCII before the answer: offsets count code points
	return docs
}

func TestLiveChunkedWindowSlicesTheText(t *testing.T) {
	client := liveClient(t)
	docs := liveLongDocs()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	req := NewRequest("who wrote romeo and juliet", docs...)
	req.Chunking = Chunks(32, 8)
	req.CacheMode = pb.CacheMode_CACHE_MODE_BYPASS
	resp, err := client.Rerank(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	best := resp.GetResults()[0]
	window := best.GetWindow()
	if best.GetIndex() != 2 || window.GetIndex() <= 0 || window.GetIndex() >= window.GetCount()-1 {
		t.Fatalf("want document 2 first, decided by a middle window; got %v", resp.GetResults())
	}
	text, err := WindowText(docs[2], window)
	if err != nil || !strings.Contains(text, "William Shakespeare") {
		t.Errorf("window %v cuts %q (%v), want the answer", window, text, err)
	}
	if rows := resp.GetUsage().GetRows(); rows != window.GetCount()+int32(len(docs)-1) {
		t.Errorf("rows %d for %d windows of the long document", rows, window.GetCount())
	}
	// Scored alone, the window's text gets the very score the long document got through it.
	alone := NewRequest("who wrote romeo and juliet", text)
	alone.CacheMode = pb.CacheMode_CACHE_MODE_BYPASS
	single, err := client.Rerank(ctx, alone)
	if err != nil {
		t.Fatal(err)
	}
	if diff := single.GetResults()[0].GetScore() - best.GetScore(); diff > 1e-4 || diff < -1e-4 {
		t.Errorf("window scored alone: %.6f, through the long document: %.6f", single.GetResults()[0].GetScore(), best.GetScore())
	}

	floor := (best.GetScore() + resp.GetResults()[1].GetScore()) / 2
	req.MinScore = MinScore(floor)
	kept, err := client.Rerank(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(kept.GetResults()) != 1 || kept.GetResults()[0].GetIndex() != 2 {
		t.Errorf("min_score %.4f: want document 2 alone, got %v", floor, kept.GetResults())
	}
}

func TestLiveBadChunkingNamesTheFields(t *testing.T) {
	client := liveClient(t)
	req := NewRequest("who wrote romeo and juliet", liveDocs...)
	req.Chunking = Chunks(16, 16)
	req.MinScore = MinScore(1.5)
	_, err := client.Rerank(context.Background(), req)
	e, ok := AsError(err)
	if !ok || e.Code != codes.InvalidArgument {
		t.Fatalf("want INVALID_ARGUMENT, got %v", err)
	}
	fields := map[string]bool{}
	for _, v := range e.FieldViolations {
		fields[v.Field] = v.Description != ""
	}
	if len(fields) != 2 || !fields["chunking.overlap_tokens"] || !fields["min_score"] {
		t.Errorf("want violations of chunking.overlap_tokens and min_score, got %v", e.FieldViolations)
	}
}
