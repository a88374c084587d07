package rerank

import (
	"context"
	"strings"
	"testing"

	pb "github.com/matryoshka-rerank/matryoshka-rerank/clients/go/matryoshka/v1"
)

// windowServer records the request it gets and answers each document with a window over its last
// `WindowTokens` code points, scored by its first-stage score.
type windowServer struct {
	pb.UnimplementedRerankServiceServer
	request *pb.RerankRequest
}

func (s *windowServer) Rerank(ctx context.Context, req *pb.RerankRequest) (*pb.RerankResponse, error) {
	s.request = req
	resp := &pb.RerankResponse{Usage: &pb.Usage{Rows: int32(len(req.GetDocuments()))}}
	for i, doc := range req.GetDocuments() {
		points := int32(len([]rune(doc.GetText())))
		start := points - req.GetChunking().GetWindowTokens()
		resp.Results = append(resp.Results, &pb.RerankResult{
			Index:  int32(i),
			Score:  doc.GetFirstStageScore(),
			Window: &pb.Window{Index: 1, Count: 2, Start: start, End: points},
		})
	}
	return resp, nil
}

func TestChunkingMinScoreAndFirstStageScoresAreSent(t *testing.T) {
	fake := &windowServer{}
	client, err := Dial(serve(t, fake, nil), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	docs := []string{"naïve café 🙂 über alles", "plain ascii text"}
	req := NewRequest("q", docs...)
	req.Chunking = Chunks(12, 3)
	req.Chunking.Aggregate = pb.Aggregate_AGGREGATE_MEAN
	req.MinScore = MinScore(0)
	if err := SetFirstStageScores(req, []float64{12.5, -1}); err != nil {
		t.Fatal(err)
	}
	resp, err := client.Rerank(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	got := fake.request
	if c := got.GetChunking(); c.GetWindowTokens() != 12 || c.GetOverlapTokens() != 3 || c.GetAggregate() != pb.Aggregate_AGGREGATE_MEAN {
		t.Errorf("chunking sent: %v", c)
	}
	if got.MinScore == nil || *got.MinScore != 0 {
		t.Errorf("min_score 0 must be sent (set, not defaulted): %v", got.MinScore)
	}
	if got.Documents[0].FirstStageScore == nil || got.Documents[0].GetFirstStageScore() != 12.5 || got.Documents[1].GetFirstStageScore() != -1 {
		t.Errorf("first-stage scores sent: %v", got.Documents)
	}
	want := []string{"🙂 über alles", "n ascii text"}
	for i, r := range resp.GetResults() {
		text, err := WindowText(docs[r.GetIndex()], r.GetWindow())
		if err != nil || text != want[i] {
			t.Errorf("result %d: window text %q (%v), want %q", i, text, err, want[i])
		}
	}
	if resp.GetUsage().GetRows() != 2 {
		t.Errorf("rows: %d", resp.GetUsage().GetRows())
	}
}

func TestSetFirstStageScoresNeedsOnePerDocument(t *testing.T) {
	req := NewRequest("q", "a", "b")
	err := SetFirstStageScores(req, []float64{1})
	if err == nil || !strings.Contains(err.Error(), "1 first-stage scores for 2 documents") {
		t.Fatalf("want a count mismatch, got %v", err)
	}
	if req.Documents[0].FirstStageScore != nil {
		t.Error("a refused call must leave the documents alone")
	}
}

func TestWindowTextCountsCodePoints(t *testing.T) {
	text := "é🙂ab"
	cases := []struct {
		start, end int32
		want       string
	}{{0, 1, "é"}, {1, 3, "🙂a"}, {4, 4, ""}, {0, 4, text}, {2, 2, ""}}
	for _, c := range cases {
		got, err := WindowText(text, &pb.Window{Start: c.start, End: c.end})
		if err != nil || got != c.want {
			t.Errorf("[%d, %d): got %q (%v), want %q", c.start, c.end, got, err, c.want)
		}
	}
	for _, w := range []*pb.Window{nil, {Start: 2, End: 5}, {Start: 3, End: 1}, {Start: -1, End: 1}} {
		if got, err := WindowText(text, w); err == nil {
			t.Errorf("window %v: want an error, got %q", w, got)
		}
	}
}
