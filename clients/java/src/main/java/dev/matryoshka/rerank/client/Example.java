package dev.matryoshka.rerank.client;

import dev.matryoshka.rerank.v1.RerankRequest;
import dev.matryoshka.rerank.v1.RerankResponse;
import dev.matryoshka.rerank.v1.RerankResult;
import java.time.Duration;
import java.util.Arrays;

/**
 * Re-ranks documents against a query and prints them best first.
 *
 * <pre>
 * java -cp ... dev.matryoshka.rerank.client.Example 127.0.0.1:50051 2000 "who wrote romeo and juliet" \
 *     "Romeo and Juliet is a tragedy written by William Shakespeare." "Bananas are rich in potassium."
 * </pre>
 *
 * Arguments: target, latency budget in milliseconds (0 = none), query, documents.
 */
public final class Example {
  private Example() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 4) {
      System.err.println("usage: Example TARGET BUDGET_MS QUERY DOCUMENT...");
      System.exit(2);
    }
    String[] documents = Arrays.copyOfRange(args, 3, args.length);
    RerankRequest.Builder request = RerankClient.request(args[2], documents);
    long budgetMillis = Long.parseLong(args[1]);
    if (budgetMillis > 0) {
      request.setBudget(RerankClient.latencyBudget(Duration.ofMillis(budgetMillis)));
    }
    try (RerankClient client =
        RerankClient.builder(args[0]).timeout(Duration.ofMinutes(1)).build()) {
      RerankResponse response = client.rerank(request.build());
      for (RerankResult r : response.getResultsList()) {
        System.out.printf(
            "%d\t%.4f\tlayer %d\t%s\t%s%n",
            r.getIndex(), r.getScore(), r.getExitLayer(), r.getExitReason(), documents[r.getIndex()]);
      }
      System.out.printf(
          "model %s, partial %b, flops saved %.2f%n",
          response.getModel(), response.getPartial(), response.getUsage().getFlopsSaved());
    } catch (RerankException e) {
      System.err.println(e.getMessage());
      System.exit(1);
    }
  }
}
