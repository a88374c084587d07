// Package rerank is a thin Go client of the matryoshka-rerank service (matryoshka.v1.RerankService).
//
// It adds to the generated stubs (package matryoshkav1) what every caller would otherwise write: a
// gRPC deadline derived from the request's budget, TLS and bearer-token options, the standard health
// check, and errors that carry the server's google.rpc.BadRequest field violations.
//
//	client, err := rerank.Dial("127.0.0.1:50051", rerank.Options{Timeout: 10 * time.Second})
//	req := rerank.NewRequest("who wrote romeo and juliet", "Romeo and Juliet is a tragedy ...", "Bananas ...")
//	req.Budget = rerank.LatencyBudget(500 * time.Millisecond)
//	resp, err := client.Rerank(ctx, req) // resp.Results[0].Index: the best document
//
// Long documents: req.Chunking = rerank.Chunks(128, 32) scores each document in overlapping windows, and
// WindowText(text, result.Window) is the window that decided its score; req.MinScore =
// rerank.MinScore(0.5) drops weak results; SetFirstStageScores passes the retriever's scores along.
package rerank

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	pb "github.com/matryoshka-rerank/matryoshka-rerank/clients/go/matryoshka/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// BudgetGrace is added to a request's latency budget to make its gRPC deadline: the server answers
// within the budget (with partial results if need be), and the grace lets that answer travel back.
const BudgetGrace = 500 * time.Millisecond

// maxReceiveBytes matches the Python client: responses that echo documents can pass gRPC's 4 MiB default.
const maxReceiveBytes = 64 << 20

// Options configures a Client. The zero value is a plaintext connection with no default deadline.
type Options struct {
	// Timeout is the deadline of a call whose context has none and whose request has no latency budget.
	// 0 = none.
	Timeout time.Duration
	// CAFile, when set, makes the connection TLS, trusting the root certificates in this PEM file.
	CAFile string
	// ServerName overrides the name checked against the server's certificate (TLS only).
	ServerName string
	// Token, when set, is sent on every call as "authorization: Bearer <Token>" metadata. Without
	// CAFile it travels in clear text: use that only on loopback or inside a trusted network.
	Token string
}

// Client calls one server. It is safe for concurrent use; Close it when done.
type Client struct {
	conn    *grpc.ClientConn
	stub    pb.RerankServiceClient
	health  healthpb.HealthClient
	options Options
}

// Dial connects to target ("host:port" or any gRPC target) lazily: errors surface on the first call.
func Dial(target string, options Options) (*Client, error) {
	dialOptions := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReceiveBytes))}
	if options.CAFile != "" {
		creds, err := tlsCredentials(options.CAFile, options.ServerName)
		if err != nil {
			return nil, err
		}
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(creds))
	} else {
		dialOptions = append(dialOptions, grpc.WithInsecure())
	}
	conn, err := grpc.Dial(target, dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	return &Client{
		conn:    conn,
		stub:    pb.NewRerankServiceClient(conn),
		health:  healthpb.NewHealthClient(conn),
		options: options,
	}, nil
}

func tlsCredentials(caFile, serverName string) (credentials.TransportCredentials, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificates in %s", caFile)
	}
	return credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}), nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// NewRequest is a request for query over documents (in this order; results refer to them by index),
// with every other field at the server's default.
func NewRequest(query string, documents ...string) *pb.RerankRequest {
	req := &pb.RerankRequest{Query: query, Documents: make([]*pb.Document, len(documents))}
	for i, text := range documents {
		req.Documents[i] = &pb.Document{Text: text}
	}
	return req
}

// LatencyBudget is a budget of wall-clock time only.
func LatencyBudget(d time.Duration) *pb.Budget {
	return &pb.Budget{MaxLatency: durationpb.New(d)}
}

// Chunks splits long documents into windows of windowTokens document tokens, each sharing overlapTokens
// with the one before; a document scores as its best window (AGGREGATE_MAX; set Aggregate for others).
func Chunks(windowTokens, overlapTokens int32) *pb.Chunking {
	return &pb.Chunking{WindowTokens: windowTokens, OverlapTokens: overlapTokens}
}

// MinScore is a value for RerankRequest.MinScore: results whose calibrated probability of relevance is
// below p (in [0, 1]) are dropped, after ranking.
func MinScore(p float64) *float64 { return &p }

// SetFirstStageScores gives each of req's documents, in order, the first-stage retriever's score
// (Document.first_stage_score: any finite value, higher = better). There must be one score per document.
func SetFirstStageScores(req *pb.RerankRequest, scores []float64) error {
	if len(scores) != len(req.GetDocuments()) {
		return fmt.Errorf("%d first-stage scores for %d documents: give one per document", len(scores), len(req.GetDocuments()))
	}
	for i, score := range scores {
		score := score
		req.Documents[i].FirstStageScore = &score
	}
	return nil
}

// WindowText is the part of a document's text that a result's window covers: window offsets count
// Unicode code points, not bytes. It fails for a nil window (the request was not chunked) or offsets
// outside text.
func WindowText(text string, window *pb.Window) (string, error) {
	if window == nil {
		return "", errors.New("no window: the request was not chunked")
	}
	start, end := int(window.GetStart()), int(window.GetEnd())
	if start < 0 || end < start {
		return "", fmt.Errorf("window [%d, %d) is not a range", start, end)
	}
	from, to, point := -1, -1, 0
	for at := range text {
		if point == start {
			from = at
		}
		if point == end {
			to = at
			break
		}
		point++
	}
	if from < 0 && point == start {
		from = len(text)
	}
	if to < 0 && point == end {
		to = len(text)
	}
	if from < 0 || to < 0 {
		return "", fmt.Errorf("window [%d, %d) is outside a text of %d code points", start, end, utf8.RuneCountInString(text))
	}
	return text[from:to], nil
}

// Rerank scores req's documents and returns them best first. The call's deadline is the earliest of
// ctx's, the request's latency budget plus BudgetGrace, and (when neither is set) Options.Timeout.
func (c *Client) Rerank(ctx context.Context, req *pb.RerankRequest) (*pb.RerankResponse, error) {
	ctx, cancel := c.callContext(ctx, req.GetBudget())
	defer cancel()
	resp, err := c.stub.Rerank(ctx, req)
	return resp, wrap(err)
}

// ModelInfo describes the models the server serves (the default first), or only `model` if not empty.
func (c *Client) ModelInfo(ctx context.Context, model string) ([]*pb.ModelInfo, error) {
	ctx, cancel := c.callContext(ctx, nil)
	defer cancel()
	resp, err := c.stub.GetModelInfo(ctx, &pb.GetModelInfoRequest{Model: model})
	if err != nil {
		return nil, wrap(err)
	}
	return resp.GetModels(), nil
}

// Health is the standard gRPC health status of `service` ("" = the server as a whole).
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := c.callContext(ctx, nil)
	defer cancel()
	resp, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, wrap(err)
	}
	return resp.GetStatus(), nil
}

// callContext adds the deadline (see Rerank) and the bearer token to ctx.
func (c *Client) callContext(ctx context.Context, budget *pb.Budget) (context.Context, context.CancelFunc) {
	if c.options.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.options.Token)
	}
	if timeout := Deadline(budget, c.options.Timeout); timeout > 0 {
		return context.WithTimeout(ctx, timeout)
	}
	return ctx, func() {}
}

// Deadline is the timeout a call gets from its budget: the latency budget plus BudgetGrace when the
// budget bounds latency, else fallback (0 = none).
func Deadline(budget *pb.Budget, fallback time.Duration) time.Duration {
	if latency := budget.GetMaxLatency(); latency != nil && latency.AsDuration() > 0 {
		return latency.AsDuration() + BudgetGrace
	}
	return fallback
}

// FieldViolation is one broken rule of a request: the field's path in it ("documents[3].text") and why.
type FieldViolation struct {
	Field       string
	Description string
}

// Error is a failed call: its status code and message, the field violations of a google.rpc.BadRequest
// detail (INVALID_ARGUMENT) and the delay a google.rpc.RetryInfo asked for (0 without one).
type Error struct {
	Code            codes.Code
	Message         string
	FieldViolations []FieldViolation
	RetryDelay      time.Duration
}

func (e *Error) Error() string {
	text := fmt.Sprintf("%s: %s", e.Code, e.Message)
	if len(e.FieldViolations) > 0 {
		parts := make([]string, len(e.FieldViolations))
		for i, v := range e.FieldViolations {
			parts[i] = v.Field + ": " + v.Description
		}
		text += " [" + strings.Join(parts, "; ") + "]"
	}
	return text
}

// GRPCStatus lets status.Code and status.FromError see through an *Error.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// AsError returns err as an *Error when a call failed with one.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// wrap turns a gRPC error into an *Error with the status's rich details.
func wrap(err error) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	e := &Error{Code: st.Code(), Message: st.Message()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.RetryInfo:
			if delay := d.GetRetryDelay(); delay != nil {
				e.RetryDelay = time.Duration(delay.GetSeconds())*time.Second + time.Duration(delay.GetNanos())
			}
		}
	}
	return e
}
