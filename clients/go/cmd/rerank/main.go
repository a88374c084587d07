// Command rerank re-ranks documents against a query through a matryoshka-rerank server and prints
// them best first.
//
//	go run ./cmd/rerank -target 127.0.0.1:50051 -budget 2s "who wrote romeo and juliet" \
//	    "Romeo and Juliet is a tragedy written by William Shakespeare." "Bananas are rich in potassium."
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/matryoshka-rerank/matryoshka-rerank/clients/go/rerank"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server address")
	budget := flag.Duration("budget", 0, "latency budget (0 = none); the deadline is this plus a grace")
	topN := flag.Int("top-n", 0, "return only the n best documents (0 = all)")
	caFile := flag.String("ca-file", "", "connect with TLS, trusting this PEM root CA")
	token := flag.String("token", "", "bearer token sent as authorization metadata")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] QUERY DOCUMENT...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 2 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*target, *caFile, *token, *budget, int32(*topN), flag.Arg(0), flag.Args()[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(target, caFile, token string, budget time.Duration, topN int32, query string, docs []string) error {
	client, err := rerank.Dial(target, rerank.Options{Timeout: time.Minute, CAFile: caFile, Token: token})
	if err != nil {
		return err
	}
	defer client.Close()
	req := rerank.NewRequest(query, docs...)
	req.TopN = topN
	if budget > 0 {
		req.Budget = rerank.LatencyBudget(budget)
	}
	resp, err := client.Rerank(context.Background(), req)
	if err != nil {
		return err
	}
	for _, r := range resp.GetResults() {
		fmt.Printf("%d\t%.4f\tlayer %d\t%s\t%s\n", r.GetIndex(), r.GetScore(), r.GetExitLayer(), r.GetExitReason(), docs[r.GetIndex()])
	}
	fmt.Printf("model %s, partial %t, flops saved %.2f\n", resp.GetModel(), resp.GetPartial(), resp.GetUsage().GetFlopsSaved())
	return nil
}
