package dev.matryoshka.rerank.client;

import dev.matryoshka.rerank.v1.Budget;
import dev.matryoshka.rerank.v1.Chunking;
import dev.matryoshka.rerank.v1.Document;
import dev.matryoshka.rerank.v1.GetModelInfoRequest;
import dev.matryoshka.rerank.v1.ModelInfo;
import dev.matryoshka.rerank.v1.RerankRequest;
import dev.matryoshka.rerank.v1.RerankResponse;
import dev.matryoshka.rerank.v1.RerankServiceGrpc;
import dev.matryoshka.rerank.v1.Window;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.stub.AbstractStub;
import io.grpc.stub.MetadataUtils;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A thin client of the matryoshka-rerank service (matryoshka.v1.RerankService) over the generated stubs.
 *
 * <p>It adds what every caller would otherwise write: a gRPC deadline derived from the request's
 * budget, TLS (a root CA file) and bearer-token options, the standard health check, and {@link
 * RerankException}s that carry the server's google.rpc.BadRequest field violations.
 *
 * <pre>{@code
 * try (RerankClient client = RerankClient.builder("127.0.0.1:50051").timeout(Duration.ofSeconds(10)).build()) {
 *   RerankRequest request = RerankClient.request("who wrote romeo and juliet", "Romeo and Juliet is ...", "Bananas ...")
 *       .setBudget(RerankClient.latencyBudget(Duration.ofMillis(500))).build();
 *   RerankResponse response = client.rerank(request); // response.getResults(0).getIndex(): the best document
 * }
 * }</pre>
 *
 * <p>Long documents: {@code .setChunking(RerankClient.chunks(128, 32))} scores each document in
 * overlapping windows and {@link #windowText} cuts out the window that decided its score; {@code
 * .setMinScore(0.5)} drops weak results; {@link #withFirstStageScores} passes the retriever's scores along.
 */
public final class RerankClient implements AutoCloseable {
  /**
   * Added to a request's latency budget to make its gRPC deadline: the server answers within the budget
   * (with partial results if need be), and the grace lets that answer travel back.
   */
  public static final Duration BUDGET_GRACE = Duration.ofMillis(500);

  private static final int MAX_INBOUND_BYTES = 64 << 20; // as the Python client: echoed documents
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  private final RerankServiceGrpc.RerankServiceBlockingStub stub;
  private final HealthGrpc.HealthBlockingStub health;
  private final Duration timeout;

  private RerankClient(Builder builder) throws IOException {
    ChannelCredentials credentials =
        builder.caFile == null
            ? InsecureChannelCredentials.create()
            : TlsChannelCredentials.newBuilder().trustManager(builder.caFile.toFile()).build();
    channel =
        Grpc.newChannelBuilder(builder.target, credentials)
            .maxInboundMessageSize(MAX_INBOUND_BYTES)
            .build();
    RerankServiceGrpc.RerankServiceBlockingStub rerank = RerankServiceGrpc.newBlockingStub(channel);
    HealthGrpc.HealthBlockingStub check = HealthGrpc.newBlockingStub(channel);
    if (builder.bearerToken != null) {
      Metadata headers = new Metadata();
      headers.put(AUTHORIZATION, "Bearer " + builder.bearerToken);
      rerank = rerank.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
      check = check.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    }
    stub = rerank;
    health = check;
    timeout = builder.timeout;
  }

  /** A builder of a client of {@code target} ("host:port" or any gRPC target). */
  public static Builder builder(String target) {
    return new Builder(target);
  }

  /** Options of a client. Unset: plaintext, no token, no default deadline. */
  public static final class Builder {
    private final String target;
    private Duration timeout;
    private Path caFile;
    private String bearerToken;

    private Builder(String target) {
      this.target = target;
    }

    /** The deadline of a call whose request has no latency budget. */
    public Builder timeout(Duration timeout) {
      this.timeout = timeout;
      return this;
    }

    /** Connect with TLS, trusting the root certificates in this PEM file. */
    public Builder caFile(Path caFile) {
      this.caFile = caFile;
      return this;
    }

    /**
     * Send "authorization: Bearer TOKEN" metadata on every call. Without {@link #caFile} it travels in
     * clear text: use that only on loopback or inside a trusted network.
     */
    public Builder bearerToken(String token) {
      this.bearerToken = token;
      return this;
    }

    /** The client; fails only if the CA file cannot be read (connecting happens on the first call). */
    public RerankClient build() throws IOException {
      return new RerankClient(this);
    }
  }

  /** A request for {@code query} over {@code documents} (results refer to them by index); server defaults. */
  public static RerankRequest.Builder request(String query, String... documents) {
    RerankRequest.Builder request = RerankRequest.newBuilder().setQuery(query);
    for (String text : documents) {
      request.addDocuments(Document.newBuilder().setText(text));
    }
    return request;
  }

  /**
   * Gives each document of {@code request}, in order, the first-stage retriever's score
   * (Document.first_stage_score: any finite value, higher = better); one score per document.
   *
   * @throws IllegalArgumentException if the number of scores is not the number of documents
   */
  public static RerankRequest.Builder withFirstStageScores(RerankRequest.Builder request, double... scores) {
    if (scores.length != request.getDocumentsCount()) {
      throw new IllegalArgumentException(
          scores.length + " first-stage scores for " + request.getDocumentsCount()
              + " documents: give one per document");
    }
    for (int i = 0; i < scores.length; i++) {
      request.getDocumentsBuilder(i).setFirstStageScore(scores[i]);
    }
    return request;
  }

  /**
   * Chunking of long documents into windows of {@code windowTokens} document tokens, each sharing {@code
   * overlapTokens} with the one before; a document scores as its best window (AGGREGATE_MAX).
   */
  public static Chunking chunks(int windowTokens, int overlapTokens) {
    return Chunking.newBuilder().setWindowTokens(windowTokens).setOverlapTokens(overlapTokens).build();
  }

  /**
   * The part of a document's text a result's window covers. Window offsets count Unicode code points,
   * not Java chars (a character outside the BMP is two chars and one code point).
   *
   * @throws IndexOutOfBoundsException if the window lies outside {@code text}
   */
  public static String windowText(String text, Window window) {
    if (window.getStart() < 0 || window.getEnd() < window.getStart()) {
      throw new IndexOutOfBoundsException(
          "window [" + window.getStart() + ", " + window.getEnd() + ") is not a range");
    }
    int from = text.offsetByCodePoints(0, window.getStart());
    return text.substring(from, text.offsetByCodePoints(from, window.getEnd() - window.getStart()));
  }

  /** A budget of wall-clock time only. */
  public static Budget latencyBudget(Duration latency) {
    return Budget.newBuilder()
        .setMaxLatency(
            com.google.protobuf.Duration.newBuilder()
                .setSeconds(latency.getSeconds())
                .setNanos(latency.getNano()))
        .build();
  }

  /**
   * The deadline a call gets: the request's latency budget plus {@link #BUDGET_GRACE} when its budget
   * bounds latency, else {@code fallback} (null = none).
   */
  public static Duration deadlineFor(RerankRequest request, Duration fallback) {
    if (request.hasBudget() && request.getBudget().hasMaxLatency()) {
      com.google.protobuf.Duration latency = request.getBudget().getMaxLatency();
      Duration budget = Duration.ofSeconds(latency.getSeconds(), latency.getNanos());
      if (!budget.isNegative() && !budget.isZero()) {
        return budget.plus(BUDGET_GRACE);
      }
    }
    return fallback;
  }

  /** Scores the request's documents and returns them best first; the deadline is {@link #deadlineFor}. */
  public RerankResponse rerank(RerankRequest request) throws RerankException {
    try {
      return withDeadline(stub, deadlineFor(request, timeout)).rerank(request);
    } catch (StatusRuntimeException e) {
      throw RerankException.from(e);
    }
  }

  /** The models the server serves (the default first), or only {@code model} if not empty. */
  public List<ModelInfo> modelInfo(String model) throws RerankException {
    try {
      return withDeadline(stub, timeout)
          .getModelInfo(GetModelInfoRequest.newBuilder().setModel(model).build())
          .getModelsList();
    } catch (StatusRuntimeException e) {
      throw RerankException.from(e);
    }
  }

  /** The standard gRPC health status of {@code service} ("" = the server as a whole). */
  public HealthCheckResponse.ServingStatus health(String service) throws RerankException {
    try {
      return withDeadline(health, timeout)
          .check(HealthCheckRequest.newBuilder().setService(service).build())
          .getStatus();
    } catch (StatusRuntimeException e) {
      throw RerankException.from(e);
    }
  }

  private static <S extends AbstractStub<S>> S withDeadline(S stub, Duration deadline) {
    return deadline == null ? stub : stub.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** Closes the channel, waiting a few seconds for calls in flight (cancelling them after that). */
  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }
}
