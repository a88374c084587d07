package dev.matryoshka.rerank.client;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;
import static org.junit.Assume.assumeTrue;

import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import dev.matryoshka.rerank.v1.Aggregate;
import dev.matryoshka.rerank.v1.Budget;
import dev.matryoshka.rerank.v1.CacheMode;
import dev.matryoshka.rerank.v1.Document;
import dev.matryoshka.rerank.v1.ModelInfo;
import dev.matryoshka.rerank.v1.RerankRequest;
import dev.matryoshka.rerank.v1.RerankResponse;
import dev.matryoshka.rerank.v1.RerankResult;
import dev.matryoshka.rerank.v1.RerankServiceGrpc;
import dev.matryoshka.rerank.v1.Usage;
import dev.matryoshka.rerank.v1.Window;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerBuilder;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.Test;

/**
 * The client against a fake server (metadata, deadline, error details) and, when MATRYOSHKA_TARGET is
 * set (tests/integration/test_clients.py sets it), against a real one.
 */
public class RerankClientTest {
  private static final String QUERY = "who wrote romeo and juliet";
  private static final String[] DOCS = {
    "The speed of light in vacuum is about 300,000 km per second.",
    "Bananas are rich in potassium.",
    "Romeo and Juliet is a tragedy written by William Shakespeare early in his career.",
    "The stock market fell sharply on Monday.",
  };
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  @Test
  public void deadlineIsTheLatencyBudgetPlusGraceElseTheFallback() {
    RerankRequest budgeted =
        RerankClient.request("q", "d").setBudget(RerankClient.latencyBudget(Duration.ofSeconds(2))).build();
    assertEquals(
        Duration.ofSeconds(2).plus(RerankClient.BUDGET_GRACE),
        RerankClient.deadlineFor(budgeted, Duration.ofMinutes(1)));
    RerankRequest flopsOnly =
        RerankClient.request("q", "d").setBudget(Budget.newBuilder().setMaxFlops(1e9)).build();
    assertEquals(Duration.ofMinutes(1), RerankClient.deadlineFor(flopsOnly, Duration.ofMinutes(1)));
    assertNull(RerankClient.deadlineFor(RerankClient.request("q", "d").build(), null));
  }

  /** Records the authorization header and deadline of a call, then fails it as the server does. */
  private static final class FakeServer extends RerankServiceGrpc.RerankServiceImplBase
      implements ServerInterceptor {
    volatile String authorization;
    volatile Deadline deadline;

    @Override
    public <Q, R> ServerCall.Listener<Q> interceptCall(
        ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
      authorization = headers.get(AUTHORIZATION);
      return next.startCall(call, headers);
    }

    @Override
    public void rerank(RerankRequest request, StreamObserver<RerankResponse> responses) {
      deadline = Context.current().getDeadline();
      BadRequest bad =
          BadRequest.newBuilder()
              .addFieldViolations(
                  BadRequest.FieldViolation.newBuilder().setField("top_n").setDescription("must be >= 0"))
              .build();
      responses.onError(
          StatusProto.toStatusRuntimeException(
              com.google.rpc.Status.newBuilder()
                  .setCode(Status.Code.INVALID_ARGUMENT.value())
                  .setMessage("invalid request")
                  .addDetails(Any.pack(bad))
                  .build()));
    }
  }

  @Test
  public void tokenDeadlineAndFieldViolationsReachTheirEnds() throws Exception {
    FakeServer fake = new FakeServer();
    Server server =
        ServerBuilder.forPort(0).addService(ServerInterceptors.intercept(fake, fake)).build().start();
    try (RerankClient client =
        RerankClient.builder("127.0.0.1:" + server.getPort()).bearerToken("s3cret").build()) {
      client.rerank(
          RerankClient.request("q", "d").setBudget(RerankClient.latencyBudget(Duration.ofSeconds(3))).build());
      fail("the fake server fails every call");
    } catch (RerankException e) {
      assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
      assertEquals(List.of(new RerankException.FieldViolation("top_n", "must be >= 0")), e.fieldViolations());
    } finally {
      server.shutdownNow();
    }
    assertEquals("Bearer s3cret", fake.authorization);
    long left = fake.deadline.timeRemaining(TimeUnit.MILLISECONDS);
    assertTrue("deadline " + left + " ms", left > 2500 && left <= 3500);
  }

  /**
   * Records the request and answers each document with a window over its last window_tokens code
   * points, scored by its first-stage score.
   */
  private static final class WindowFake extends RerankServiceGrpc.RerankServiceImplBase {
    volatile RerankRequest request;

    @Override
    public void rerank(RerankRequest request, StreamObserver<RerankResponse> responses) {
      this.request = request;
      RerankResponse.Builder response =
          RerankResponse.newBuilder().setUsage(Usage.newBuilder().setRows(request.getDocumentsCount()));
      for (int i = 0; i < request.getDocumentsCount(); i++) {
        Document doc = request.getDocuments(i);
        int points = doc.getText().codePointCount(0, doc.getText().length());
        Window window =
            Window.newBuilder()
                .setIndex(1)
                .setCount(2)
                .setStart(points - request.getChunking().getWindowTokens())
                .setEnd(points)
                .build();
        response.addResults(
            RerankResult.newBuilder().setIndex(i).setScore(doc.getFirstStageScore()).setWindow(window));
      }
      responses.onNext(response.build());
      responses.onCompleted();
    }
  }

  @Test
  public void chunkingMinScoreAndFirstStageScoresAreSentAndWindowsCut() throws Exception {
    WindowFake fake = new WindowFake();
    Server server = ServerBuilder.forPort(0).addService(fake).build().start();
    String[] docs = {"naïve café 🙂 über alles", "plain ascii text"};
    RerankResponse response;
    try (RerankClient client = RerankClient.builder("127.0.0.1:" + server.getPort()).build()) {
      RerankRequest.Builder request =
          RerankClient.request("q", docs)
              .setChunking(RerankClient.chunks(12, 3).toBuilder().setAggregate(Aggregate.AGGREGATE_MEAN))
              .setMinScore(0);
      response = client.rerank(RerankClient.withFirstStageScores(request, 12.5, -1).build());
    } finally {
      server.shutdownNow();
    }
    RerankRequest sent = fake.request;
    assertEquals(12, sent.getChunking().getWindowTokens());
    assertEquals(3, sent.getChunking().getOverlapTokens());
    assertEquals(Aggregate.AGGREGATE_MEAN, sent.getChunking().getAggregate());
    assertTrue("min_score 0 is sent, not left to the default", sent.hasMinScore());
    assertTrue(sent.getDocuments(0).hasFirstStageScore());
    assertEquals(12.5, sent.getDocuments(0).getFirstStageScore(), 0);
    assertEquals(-1, sent.getDocuments(1).getFirstStageScore(), 0);
    assertEquals(2, response.getUsage().getRows());
    List<String> windows =
        response.getResultsList().stream()
            .map(r -> RerankClient.windowText(docs[r.getIndex()], r.getWindow()))
            .collect(Collectors.toList());
    assertEquals(List.of("🙂 über alles", "n ascii text"), windows);
  }

  @Test
  public void firstStageScoresNeedOnePerDocument() {
    RerankRequest.Builder request = RerankClient.request("q", "a", "b");
    try {
      RerankClient.withFirstStageScores(request, 1.0);
      fail("one score for two documents must be refused");
    } catch (IllegalArgumentException e) {
      assertTrue(e.getMessage(), e.getMessage().startsWith("1 first-stage scores for 2 documents"));
    }
    assertFalse(request.getDocuments(0).hasFirstStageScore());
  }

  @Test
  public void windowTextCountsCodePoints() {
    String text = "é🙂ab";
    assertEquals("é", RerankClient.windowText(text, window(0, 1)));
    assertEquals("🙂a", RerankClient.windowText(text, window(1, 3)));
    assertEquals("", RerankClient.windowText(text, window(4, 4)));
    assertEquals(text, RerankClient.windowText(text, window(0, 4)));
    for (Window outside : List.of(window(2, 5), window(3, 1), window(-1, 1))) {
      try {
        fail("window " + outside + " cut " + RerankClient.windowText(text, outside));
      } catch (IndexOutOfBoundsException expected) {
        // offsets outside the text, or not a range
      }
    }
  }

  private static Window window(int start, int end) {
    return Window.newBuilder().setStart(start).setEnd(end).build();
  }

  @Test
  public void aMissingCaFileFailsTheBuild() {
    try (RerankClient client =
        RerankClient.builder("127.0.0.1:1").caFile(Path.of("/nonexistent/ca.pem")).build()) {
      fail("built a TLS client without its CA file: " + client);
    } catch (IOException expected) {
      // the CA file is read when the client is built
    }
  }

  private static RerankClient live() throws Exception {
    String target = System.getenv("MATRYOSHKA_TARGET");
    assumeTrue("MATRYOSHKA_TARGET not set: no live server", target != null && !target.isEmpty());
    return RerankClient.builder(target).timeout(Duration.ofMinutes(1)).bearerToken("not-checked-yet").build();
  }

  @Test
  public void liveRerankRanksTheAnswerFirst() throws Exception {
    try (RerankClient client = live()) {
      RerankResponse response =
          client.rerank(
              RerankClient.request(QUERY, DOCS)
                  .setBudget(RerankClient.latencyBudget(Duration.ofSeconds(60)))
                  .setRequestId("java-1")
                  .setCacheMode(CacheMode.CACHE_MODE_BYPASS) // computed, not an earlier test's hit
                  .build());
      assertEquals(DOCS.length, response.getResultsCount());
      assertEquals(2, response.getResults(0).getIndex());
      assertEquals("java-1", response.getRequestId());
      assertFalse(response.getPartial());
      assertTrue(response.getUsage().getFlops() > 0);
    }
  }

  @Test
  public void liveBadRequestNamesTheFields() throws Exception {
    try (RerankClient client = live()) {
      client.rerank(RerankClient.request("   ", DOCS).setTopN(-1).build());
      fail("an empty query and a negative top_n must be rejected");
    } catch (RerankException e) {
      assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
      Set<String> fields =
          e.fieldViolations().stream().map(RerankException.FieldViolation::field).collect(Collectors.toSet());
      assertTrue(e.getMessage(), fields.containsAll(Set.of("query", "top_n")));
    }
  }

  /** DOCS with the answer (document 2) buried in the middle of a long text, after non-BMP characters. */
  private static String[] longDocs() {
    String filler =
        "Bananas are rich in potassium. ".repeat(8) + "The stock market fell sharply on Monday. ".repeat(8);
    String[] docs = DOCS.clone();
    docs[2] = filler + "🎭 ¿Qué? " + DOCS[2] + " " + filler; // offsets count code points, not chars
    return docs;
  }

  @Test
  public void liveChunkedWindowSlicesTheText() throws Exception {
    String[] docs = longDocs();
    try (RerankClient client = live()) {
      RerankRequest.Builder request =
          RerankClient.request(QUERY, docs)
              .setChunking(RerankClient.chunks(32, 8))
              .setCacheMode(CacheMode.CACHE_MODE_BYPASS);
      RerankResponse response = client.rerank(request.build());
      RerankResult best = response.getResults(0);
      Window window = best.getWindow();
      assertEquals(2, best.getIndex());
      assertTrue(window.toString(), window.getIndex() > 0 && window.getIndex() < window.getCount() - 1);
      String text = RerankClient.windowText(docs[2], window);
      assertTrue(text, text.contains("William Shakespeare"));
      assertEquals(window.getCount() + docs.length - 1, response.getUsage().getRows());
      // Scored alone, the window's text gets the very score the long document got through it.
      RerankResponse alone =
          client.rerank(
              RerankClient.request(QUERY, text).setCacheMode(CacheMode.CACHE_MODE_BYPASS).build());
      assertEquals(best.getScore(), alone.getResults(0).getScore(), 1e-4);

      double floor = (best.getScore() + response.getResults(1).getScore()) / 2;
      RerankResponse kept = client.rerank(request.setMinScore(floor).build());
      assertEquals(1, kept.getResultsCount());
      assertEquals(2, kept.getResults(0).getIndex());
    }
  }

  @Test
  public void liveBadChunkingNamesTheFields() throws Exception {
    try (RerankClient client = live()) {
      client.rerank(
          RerankClient.request(QUERY, DOCS).setChunking(RerankClient.chunks(16, 16)).setMinScore(1.5).build());
      fail("an overlap as long as the window and a min_score above 1 must be rejected");
    } catch (RerankException e) {
      assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
      Set<String> fields =
          e.fieldViolations().stream().map(RerankException.FieldViolation::field).collect(Collectors.toSet());
      assertEquals(Set.of("chunking.overlap_tokens", "min_score"), fields);
    }
  }

  @Test
  public void liveModelInfoAndHealth() throws Exception {
    try (RerankClient client = live()) {
      List<ModelInfo> models = client.modelInfo("");
      assertFalse(models.isEmpty());
      assertTrue(models.get(0).getIsDefault());
      assertTrue(models.get(0).getNumLayers() > 0 && models.get(0).getHeadLayersCount() > 0);
      for (String service : List.of("", "matryoshka.v1.RerankService")) {
        assertEquals(HealthCheckResponse.ServingStatus.SERVING, client.health(service));
      }
      try {
        client.modelInfo("no-such-model");
        fail("an unknown model must be NOT_FOUND");
      } catch (RerankException e) {
        assertEquals(Status.Code.NOT_FOUND, e.code());
      }
    }
  }
}
