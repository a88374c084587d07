package rerank

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/matryoshka-rerank/matryoshka-rerank/clients/go/matryoshka/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fakeServer records what a call carried and fails it with a BadRequest, as the real server does.
type fakeServer struct {
	pb.UnimplementedRerankServiceServer
	authorization []string
	deadline      time.Duration
}

func (s *fakeServer) Rerank(ctx context.Context, req *pb.RerankRequest) (*pb.RerankResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.authorization = md.Get("authorization")
	if deadline, ok := ctx.Deadline(); ok {
		s.deadline = time.Until(deadline)
	}
	st, err := status.New(codes.InvalidArgument, "invalid request").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "top_n", Description: "must be >= 0"}},
	})
	if err != nil {
		return nil, err
	}
	return nil, st.Err()
}

// serve starts fake on a loopback port (TLS when creds is not nil) and returns its address.
func serve(t *testing.T, fake pb.RerankServiceServer, creds credentials.TransportCredentials) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var options []grpc.ServerOption
	if creds != nil {
		options = append(options, grpc.Creds(creds))
	}
	server := grpc.NewServer(options...)
	pb.RegisterRerankServiceServer(server, fake)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	return listener.Addr().String()
}

func TestDeadlineIsTheBudgetPlusGraceElseTheFallback(t *testing.T) {
	if got := Deadline(LatencyBudget(2*time.Second), time.Minute); got != 2*time.Second+BudgetGrace {
		t.Errorf("latency budget: got %v", got)
	}
	if got := Deadline(&pb.Budget{MaxFlops: floatPtr(1e9)}, time.Minute); got != time.Minute {
		t.Errorf("FLOP-only budget: got %v", got)
	}
	if got := Deadline(nil, 0); got != 0 {
		t.Errorf("no budget, no timeout: got %v", got)
	}
}

func floatPtr(v float64) *float64 { return &v }

func TestTokenDeadlineAndFieldViolationsReachTheCaller(t *testing.T) {
	fake := &fakeServer{}
	client, err := Dial(serve(t, fake, nil), Options{Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	req := NewRequest("q", "d")
	req.Budget = LatencyBudget(3 * time.Second)
	_, err = client.Rerank(context.Background(), req)
	e, ok := AsError(err)
	if !ok || e.Code != codes.InvalidArgument || len(e.FieldViolations) != 1 || e.FieldViolations[0].Field != "top_n" {
		t.Fatalf("want INVALID_ARGUMENT naming top_n, got %v", err)
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("status.Code sees %v", status.Code(err))
	}
	if len(fake.authorization) != 1 || fake.authorization[0] != "Bearer s3cret" {
		t.Errorf("authorization metadata: %q", fake.authorization)
	}
	if fake.deadline <= 3*time.Second || fake.deadline > 3*time.Second+BudgetGrace {
		t.Errorf("deadline seen by the server: %v", fake.deadline)
	}
}

func TestTLSWithARootCAFile(t *testing.T) {
	certPEM, keyPEM := selfSigned(t)
	certificate, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeServer{}
	target := serve(t, fake, credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{certificate}}))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	client, err := Dial(target, Options{CAFile: caFile, ServerName: "localhost", Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_, err = client.Rerank(context.Background(), NewRequest("q", "d"))
	if status.Code(err) != codes.InvalidArgument || len(fake.authorization) != 1 {
		t.Fatalf("call over TLS: %v (authorization %q)", err, fake.authorization)
	}
	if _, err := Dial(target, Options{CAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Error("a missing CA file must fail Dial")
	}
}

// selfSigned is a certificate for "localhost" that is its own CA, and its key, in PEM.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}
