package dev.matryoshka.rerank.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.stream.Collectors;

/**
 * A failed call: its status code and message, the field violations of a google.rpc.BadRequest detail
 * (INVALID_ARGUMENT) and the delay a google.rpc.RetryInfo asked for.
 */
public final class RerankException extends Exception {
  private static final long serialVersionUID = 1L;

  /** One broken rule of a request: the field's path in it ("documents[3].text") and what is wrong. */
  public record FieldViolation(String field, String description) {}

  private final Status.Code code;
  private final String statusMessage;
  private final List<FieldViolation> fieldViolations;
  private final Duration retryDelay;

  RerankException(
      Status.Code code, String message, List<FieldViolation> violations, Duration retryDelay, Throwable cause) {
    super(describe(code, message, violations), cause);
    this.code = code;
    this.statusMessage = message;
    this.fieldViolations = List.copyOf(violations);
    this.retryDelay = retryDelay;
  }

  /** From a failed call, with the google.rpc.Status details in its trailers (if any). */
  static RerankException from(StatusRuntimeException e) {
    List<FieldViolation> violations = new ArrayList<>();
    Duration retryDelay = null;
    com.google.rpc.Status rich = StatusProto.fromThrowable(e);
    for (Any detail : rich == null ? List.<Any>of() : rich.getDetailsList()) {
      try {
        if (detail.is(BadRequest.class)) {
          for (BadRequest.FieldViolation v : detail.unpack(BadRequest.class).getFieldViolationsList()) {
            violations.add(new FieldViolation(v.getField(), v.getDescription()));
          }
        } else if (detail.is(RetryInfo.class)) {
          com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
          retryDelay = Duration.ofSeconds(delay.getSeconds(), delay.getNanos());
        }
      } catch (InvalidProtocolBufferException ignored) {
        // an undecodable detail is no detail; the status code and message still say what failed
      }
    }
    String message = e.getStatus().getDescription();
    return new RerankException(
        e.getStatus().getCode(), message == null ? "" : message, violations, retryDelay, e);
  }

  private static String describe(Status.Code code, String message, List<FieldViolation> violations) {
    String text = code + ": " + message;
    if (!violations.isEmpty()) {
      text +=
          violations.stream()
              .map(v -> v.field() + ": " + v.description())
              .collect(Collectors.joining("; ", " [", "]"));
    }
    return text;
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return code;
  }

  /** The status message. */
  public String statusMessage() {
    return statusMessage;
  }

  /** Every broken request field the server named (empty unless INVALID_ARGUMENT). */
  public List<FieldViolation> fieldViolations() {
    return fieldViolations;
  }

  /** How long the server asked the caller to wait before retrying (RESOURCE_EXHAUSTED). */
  public Optional<Duration> retryDelay() {
    return Optional.ofNullable(retryDelay);
  }
}
