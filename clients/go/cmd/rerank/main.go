// Command rerank re-ranks documents against a query through a matryoshka-rerank server and prints
// them best first.
//
//	go run ./cmd/rerank -target 127.0.0.1:50051 -budget 2s "who wrote romeo and juliet" \
//	    "Romeo and Juliet is a tragedy written by William Shakespeare." "Bananas are rich in potassium."
//
// With -window-tokens N, long documents are scored in windows of N tokens (-overlap-tokens shared) and
// each line ends with the window that decided the document's score; -min-score drops weak results.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	pb "github.com/matryoshka-rerank/matryoshka-rerank/clients/go/matryoshka/v1"
	"github.com/matryoshka-rerank/matryoshka-rerank/clients/go/rerank"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server address")
	budget := flag.Duration("budget", 0, "latency budget (0 = none); the deadline is this plus a grace")
	topN := flag.Int("top-n", 0, "return only the n best documents (0 = all)")
	caFile := flag.String("ca-file", "", "connect with TLS, trusting this PEM root CA")
	token := flag.String("token", "", "bearer token sent as authorization metadata")
	windowTokens := flag.Int("window-tokens", 0, "score long documents in windows of this many tokens (0 = no chunking)")
	overlapTokens := flag.Int("overlap-tokens", 0, "tokens a window shares with the one before (with -window-tokens)")
	minScore := flag.Float64("min-score", -1, "drop results whose probability of relevance is below this (< 0 = keep all)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] QUERY DOCUMENT...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 2 {
		flag.Usage()
		os.Exit(2)
	}
	req := rerank.NewRequest(flag.Arg(0), flag.Args()[1:]...)
	req.TopN = int32(*topN)
	if *budget > 0 {
		req.Budget = rerank.LatencyBudget(*budget)
	}
	if *windowTokens > 0 {
		req.Chunking = rerank.Chunks(int32(*windowTokens), int32(*overlapTokens))
	}
	if *minScore >= 0 {
		req.MinScore = rerank.MinScore(*minScore)
	}
	if err := run(*target, *caFile, *token, req, flag.Args()[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(target, caFile, token string, req *pb.RerankRequest, docs []string) error {
	client, err := rerank.Dial(target, rerank.Options{Timeout: time.Minute, CAFile: caFile, Token: token})
	if err != nil {
		return err
	}
	defer client.Close()
	resp, err := client.Rerank(context.Background(), req)
	if err != nil {
		return err
	}
	for _, r := range resp.GetResults() {
		line := fmt.Sprintf("%d\t%.4f\tlayer %d\t%s\t%s", r.GetIndex(), r.GetScore(), r.GetExitLayer(), r.GetExitReason(), docs[r.GetIndex()])
		if w := r.GetWindow(); w != nil {
			text, err := rerank.WindowText(docs[r.GetIndex()], w)
			if err != nil {
				return err
			}
			line += fmt.Sprintf("\twindow %d/%d [%d, %d): %s", w.GetIndex()+1, w.GetCount(), w.GetStart(), w.GetEnd(), text)
		}
		fmt.Println(line)
	}
	fmt.Printf("model %s, partial %t, flops saved %.2f\n", resp.GetModel(), resp.GetPartial(), resp.GetUsage().GetFlopsSaved())
	return nil
}
