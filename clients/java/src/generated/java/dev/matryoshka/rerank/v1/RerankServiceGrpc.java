package dev.matryoshka.rerank.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * Adaptive early-exit re-ranking.
 * </pre>
 */
@javax.annotation.Generated(
    value = "by gRPC proto compiler",
    comments = "Source: matryoshka/v1/rerank_service.proto")
@io.grpc.stub.annotations.GrpcGenerated
public final class RerankServiceGrpc {

  private RerankServiceGrpc() {}

  public static final String SERVICE_NAME = "matryoshka.v1.RerankService";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.RerankRequest,
      dev.matryoshka.rerank.v1.RerankResponse> getRerankMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "Rerank",
      requestType = dev.matryoshka.rerank.v1.RerankRequest.class,
      responseType = dev.matryoshka.rerank.v1.RerankResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.RerankRequest,
      dev.matryoshka.rerank.v1.RerankResponse> getRerankMethod() {
    io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.RerankRequest, dev.matryoshka.rerank.v1.RerankResponse> getRerankMethod;
    if ((getRerankMethod = RerankServiceGrpc.getRerankMethod) == null) {
      synchronized (RerankServiceGrpc.class) {
        if ((getRerankMethod = RerankServiceGrpc.getRerankMethod) == null) {
          RerankServiceGrpc.getRerankMethod = getRerankMethod =
              io.grpc.MethodDescriptor.<dev.matryoshka.rerank.v1.RerankRequest, dev.matryoshka.rerank.v1.RerankResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "Rerank"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.matryoshka.rerank.v1.RerankRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.matryoshka.rerank.v1.RerankResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RerankServiceMethodDescriptorSupplier("Rerank"))
              .build();
        }
      }
    }
    return getRerankMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.StreamRerankRequest,
      dev.matryoshka.rerank.v1.StreamRerankResponse> getStreamRerankMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "StreamRerank",
      requestType = dev.matryoshka.rerank.v1.StreamRerankRequest.class,
      responseType = dev.matryoshka.rerank.v1.StreamRerankResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
  public static io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.StreamRerankRequest,
      dev.matryoshka.rerank.v1.StreamRerankResponse> getStreamRerankMethod() {
    io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.StreamRerankRequest, dev.matryoshka.rerank.v1.StreamRerankResponse> getStreamRerankMethod;
    if ((getStreamRerankMethod = RerankServiceGrpc.getStreamRerankMethod) == null) {
      synchronized (RerankServiceGrpc.class) {
        if ((getStreamRerankMethod = RerankServiceGrpc.getStreamRerankMethod) == null) {
          RerankServiceGrpc.getStreamRerankMethod = getStreamRerankMethod =
              io.grpc.MethodDescriptor.<dev.matryoshka.rerank.v1.StreamRerankRequest, dev.matryoshka.rerank.v1.StreamRerankResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "StreamRerank"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.matryoshka.rerank.v1.StreamRerankRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.matryoshka.rerank.v1.StreamRerankResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RerankServiceMethodDescriptorSupplier("StreamRerank"))
              .build();
        }
      }
    }
    return getStreamRerankMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.GetModelInfoRequest,
      dev.matryoshka.rerank.v1.GetModelInfoResponse> getGetModelInfoMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "GetModelInfo",
      requestType = dev.matryoshka.rerank.v1.GetModelInfoRequest.class,
      responseType = dev.matryoshka.rerank.v1.GetModelInfoResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.GetModelInfoRequest,
      dev.matryoshka.rerank.v1.GetModelInfoResponse> getGetModelInfoMethod() {
    io.grpc.MethodDescriptor<dev.matryoshka.rerank.v1.GetModelInfoRequest, dev.matryoshka.rerank.v1.GetModelInfoResponse> getGetModelInfoMethod;
    if ((getGetModelInfoMethod = RerankServiceGrpc.getGetModelInfoMethod) == null) {
      synchronized (RerankServiceGrpc.class) {
        if ((getGetModelInfoMethod = RerankServiceGrpc.getGetModelInfoMethod) == null) {
          RerankServiceGrpc.getGetModelInfoMethod = getGetModelInfoMethod =
              io.grpc.MethodDescriptor.<dev.matryoshka.rerank.v1.GetModelInfoRequest, dev.matryoshka.rerank.v1.GetModelInfoResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "GetModelInfo"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.matryoshka.rerank.v1.GetModelInfoRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.matryoshka.rerank.v1.GetModelInfoResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RerankServiceMethodDescriptorSupplier("GetModelInfo"))
              .build();
        }
      }
    }
    return getGetModelInfoMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static RerankServiceStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<RerankServiceStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<RerankServiceStub>() {
        @java.lang.Override
        public RerankServiceStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new RerankServiceStub(channel, callOptions);
        }
      };
    return RerankServiceStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static RerankServiceBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<RerankServiceBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<RerankServiceBlockingStub>() {
        @java.lang.Override
        public RerankServiceBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new RerankServiceBlockingStub(channel, callOptions);
        }
      };
    return RerankServiceBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static RerankServiceFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<RerankServiceFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<RerankServiceFutureStub>() {
        @java.lang.Override
        public RerankServiceFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new RerankServiceFutureStub(channel, callOptions);
        }
      };
    return RerankServiceFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * Adaptive early-exit re-ranking.
   * </pre>
   */
  public static abstract class RerankServiceImplBase implements io.grpc.BindableService {

    /**
     * <pre>
     * Scores every document against the query and returns them best first.
     * </pre>
     */
    public void rerank(dev.matryoshka.rerank.v1.RerankRequest request,
        io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.RerankResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRerankMethod(), responseObserver);
    }

    /**
     * <pre>
     * Like Rerank, but sends the ranking as it forms: one message after every head layer the request
     * reaches (a stage), then a final message equal in content to Rerank's response.
     * </pre>
     */
    public void streamRerank(dev.matryoshka.rerank.v1.StreamRerankRequest request,
        io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.StreamRerankResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getStreamRerankMethod(), responseObserver);
    }

    /**
     * <pre>
     * Describes the models this server serves: their shape, exit layers, limits and identity.
     * </pre>
     */
    public void getModelInfo(dev.matryoshka.rerank.v1.GetModelInfoRequest request,
        io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.GetModelInfoResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGetModelInfoMethod(), responseObserver);
    }

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return io.grpc.ServerServiceDefinition.builder(getServiceDescriptor())
          .addMethod(
            getRerankMethod(),
            io.grpc.stub.ServerCalls.asyncUnaryCall(
              new MethodHandlers<
                dev.matryoshka.rerank.v1.RerankRequest,
                dev.matryoshka.rerank.v1.RerankResponse>(
                  this, METHODID_RERANK)))
          .addMethod(
            getStreamRerankMethod(),
            io.grpc.stub.ServerCalls.asyncServerStreamingCall(
              new MethodHandlers<
                dev.matryoshka.rerank.v1.StreamRerankRequest,
                dev.matryoshka.rerank.v1.StreamRerankResponse>(
                  this, METHODID_STREAM_RERANK)))
          .addMethod(
            getGetModelInfoMethod(),
            io.grpc.stub.ServerCalls.asyncUnaryCall(
              new MethodHandlers<
                dev.matryoshka.rerank.v1.GetModelInfoRequest,
                dev.matryoshka.rerank.v1.GetModelInfoResponse>(
                  this, METHODID_GET_MODEL_INFO)))
          .build();
    }
  }

  /**
   * <pre>
   * Adaptive early-exit re-ranking.
   * </pre>
   */
  public static final class RerankServiceStub extends io.grpc.stub.AbstractAsyncStub<RerankServiceStub> {
    private RerankServiceStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected RerankServiceStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new RerankServiceStub(channel, callOptions);
    }

    /**
     * <pre>
     * Scores every document against the query and returns them best first.
     * </pre>
     */
    public void rerank(dev.matryoshka.rerank.v1.RerankRequest request,
        io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.RerankResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRerankMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Like Rerank, but sends the ranking as it forms: one message after every head layer the request
     * reaches (a stage), then a final message equal in content to Rerank's response.
     * </pre>
     */
    public void streamRerank(dev.matryoshka.rerank.v1.StreamRerankRequest request,
        io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.StreamRerankResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncServerStreamingCall(
          getChannel().newCall(getStreamRerankMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Describes the models this server serves: their shape, exit layers, limits and identity.
     * </pre>
     */
    public void getModelInfo(dev.matryoshka.rerank.v1.GetModelInfoRequest request,
        io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.GetModelInfoResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getGetModelInfoMethod(), getCallOptions()), request, responseObserver);
    }
  }

  /**
   * <pre>
   * Adaptive early-exit re-ranking.
   * </pre>
   */
  public static final class RerankServiceBlockingStub extends io.grpc.stub.AbstractBlockingStub<RerankServiceBlockingStub> {
    private RerankServiceBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected RerankServiceBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new RerankServiceBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * Scores every document against the query and returns them best first.
     * </pre>
     */
    public dev.matryoshka.rerank.v1.RerankResponse rerank(dev.matryoshka.rerank.v1.RerankRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRerankMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Like Rerank, but sends the ranking as it forms: one message after every head layer the request
     * reaches (a stage), then a final message equal in content to Rerank's response.
     * </pre>
     */
    public java.util.Iterator<dev.matryoshka.rerank.v1.StreamRerankResponse> streamRerank(
        dev.matryoshka.rerank.v1.StreamRerankRequest request) {
      return io.grpc.stub.ClientCalls.blockingServerStreamingCall(
          getChannel(), getStreamRerankMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Describes the models this server serves: their shape, exit layers, limits and identity.
     * </pre>
     */
    public dev.matryoshka.rerank.v1.GetModelInfoResponse getModelInfo(dev.matryoshka.rerank.v1.GetModelInfoRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getGetModelInfoMethod(), getCallOptions(), request);
    }
  }

  /**
   * <pre>
   * Adaptive early-exit re-ranking.
   * </pre>
   */
  public static final class RerankServiceFutureStub extends io.grpc.stub.AbstractFutureStub<RerankServiceFutureStub> {
    private RerankServiceFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected RerankServiceFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new RerankServiceFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * Scores every document against the query and returns them best first.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.matryoshka.rerank.v1.RerankResponse> rerank(
        dev.matryoshka.rerank.v1.RerankRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRerankMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * Describes the models this server serves: their shape, exit layers, limits and identity.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.matryoshka.rerank.v1.GetModelInfoResponse> getModelInfo(
        dev.matryoshka.rerank.v1.GetModelInfoRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getGetModelInfoMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_RERANK = 0;
  private static final int METHODID_STREAM_RERANK = 1;
  private static final int METHODID_GET_MODEL_INFO = 2;

  private static final class MethodHandlers<Req, Resp> implements
      io.grpc.stub.ServerCalls.UnaryMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ServerStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ClientStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.BidiStreamingMethod<Req, Resp> {
    private final RerankServiceImplBase serviceImpl;
    private final int methodId;

    MethodHandlers(RerankServiceImplBase serviceImpl, int methodId) {
      this.serviceImpl = serviceImpl;
      this.methodId = methodId;
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public void invoke(Req request, io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        case METHODID_RERANK:
          serviceImpl.rerank((dev.matryoshka.rerank.v1.RerankRequest) request,
              (io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.RerankResponse>) responseObserver);
          break;
        case METHODID_STREAM_RERANK:
          serviceImpl.streamRerank((dev.matryoshka.rerank.v1.StreamRerankRequest) request,
              (io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.StreamRerankResponse>) responseObserver);
          break;
        case METHODID_GET_MODEL_INFO:
          serviceImpl.getModelInfo((dev.matryoshka.rerank.v1.GetModelInfoRequest) request,
              (io.grpc.stub.StreamObserver<dev.matryoshka.rerank.v1.GetModelInfoResponse>) responseObserver);
          break;
        default:
          throw new AssertionError();
      }
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public io.grpc.stub.StreamObserver<Req> invoke(
        io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        default:
          throw new AssertionError();
      }
    }
  }

  private static abstract class RerankServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    RerankServiceBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return dev.matryoshka.rerank.v1.RerankServiceProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("RerankService");
    }
  }

  private static final class RerankServiceFileDescriptorSupplier
      extends RerankServiceBaseDescriptorSupplier {
    RerankServiceFileDescriptorSupplier() {}
  }

  private static final class RerankServiceMethodDescriptorSupplier
      extends RerankServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final String methodName;

    RerankServiceMethodDescriptorSupplier(String methodName) {
      this.methodName = methodName;
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.MethodDescriptor getMethodDescriptor() {
      return getServiceDescriptor().findMethodByName(methodName);
    }
  }

  private static volatile io.grpc.ServiceDescriptor serviceDescriptor;

  public static io.grpc.ServiceDescriptor getServiceDescriptor() {
    io.grpc.ServiceDescriptor result = serviceDescriptor;
    if (result == null) {
      synchronized (RerankServiceGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new RerankServiceFileDescriptorSupplier())
              .addMethod(getRerankMethod())
              .addMethod(getStreamRerankMethod())
              .addMethod(getGetModelInfoMethod())
              .build();
        }
      }
    }
    return result;
  }
}
