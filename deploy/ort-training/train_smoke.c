/* Smoke check for a training-capable ONNX Runtime: load the artifacts that make_tiny_artifacts.py
 * writes, run TrainStep + OptimizerStep + LazyResetGrad a few times through the C training API and
 * check that the loss falls. It mirrors, call for call, what wrn does through ort's
 * training_api() (see README.md, "ort 2.0.0-rc.15 Trainer::step workaround").
 *
 * Build inside the userland and run through its loader (deploy/ort-training/README.md):
 *   C=.cache/ort-training
 *   cp deploy/ort-training/train_smoke.c $C/root/tmp/ && mkdir -p $C/root/tmp/ort && cp -a $C/include $C/lib $C/root/tmp/ort/
 *   chroot $C/root gcc -O1 -o /tmp/train_smoke /tmp/train_smoke.c -I/tmp/ort/include -L/tmp/ort/lib -lonnxruntime
 *   $C/run-in-userland.sh $C/root/tmp/train_smoke ARTIFACTS_DIR [STEPS]
 * Exit 0 when the last loss is below half the first one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"
#include "onnxruntime_training_c_api.h"

static const OrtApi *api;

static void check(OrtStatus *st, const char *what) {
  if (st != NULL) {
    fprintf(stderr, "%s: %s\n", what, api->GetErrorMessage(st));
    api->ReleaseStatus(st);
    exit(2);
  }
}

enum { FEATURES = 4, CLASSES = 3, BATCH = 12 };

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s ARTIFACTS_DIR [STEPS]\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  int steps = argc > 2 ? atoi(argv[2]) : 30;
  char ckpt_path[4096], train_path[4096], eval_path[4096], optim_path[4096];
  snprintf(ckpt_path, sizeof ckpt_path, "%s/checkpoint", dir);
  snprintf(train_path, sizeof train_path, "%s/training_model.onnx", dir);
  snprintf(eval_path, sizeof eval_path, "%s/eval_model.onnx", dir);
  snprintf(optim_path, sizeof optim_path, "%s/optimizer_model.onnx", dir);

  api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (api == NULL) {
    fprintf(stderr, "library does not serve ORT API %d\n", ORT_API_VERSION);
    return 2;
  }
  printf("onnxruntime %s\n", OrtGetApiBase()->GetVersionString());
  const OrtTrainingApi *t = api->GetTrainingApi(ORT_API_VERSION);
  if (t == NULL) {
    fprintf(stderr, "this ONNX Runtime has no training API\n");
    return 3;
  }

  OrtEnv *env;
  check(api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "train_smoke", &env), "CreateEnv");
  OrtSessionOptions *so;
  check(api->CreateSessionOptions(&so), "CreateSessionOptions");
  OrtCheckpointState *ckpt;
  check(t->LoadCheckpoint(ckpt_path, &ckpt), "LoadCheckpoint");
  OrtTrainingSession *sess;
  check(t->CreateTrainingSession(env, so, ckpt, train_path, eval_path, optim_path, &sess), "CreateTrainingSession");

  OrtAllocator *alloc;
  check(api->GetAllocatorWithDefaultOptions(&alloc), "GetAllocatorWithDefaultOptions");
  size_t n_in, n_out;
  check(t->TrainingSessionGetTrainingModelInputCount(sess, &n_in), "InputCount");
  check(t->TrainingSessionGetTrainingModelOutputCount(sess, &n_out), "OutputCount");
  for (size_t i = 0; i < n_in; i++) {
    char *name;
    check(t->TrainingSessionGetTrainingModelInputName(sess, i, alloc, &name), "InputName");
    printf("train input %zu: %s\n", i, name);
    check(api->AllocatorFree(alloc, name), "AllocatorFree");
  }
  for (size_t i = 0; i < n_out; i++) {
    char *name;
    check(t->TrainingSessionGetTrainingModelOutputName(sess, i, alloc, &name), "OutputName");
    printf("train output %zu: %s\n", i, name);
    check(api->AllocatorFree(alloc, name), "AllocatorFree");
  }
  size_t n_params;
  check(t->GetParametersSize(sess, &n_params, 1), "GetParametersSize");
  printf("trainable parameters: %zu\n", n_params);

  /* a separable toy set: class c has feature c at +2, the others near 0 */
  float x[BATCH * FEATURES];
  int64_t y[BATCH];
  unsigned seed = 12345;
  for (int i = 0; i < BATCH; i++) {
    y[i] = i % CLASSES;
    for (int f = 0; f < FEATURES; f++) {
      seed = seed * 1103515245u + 12345u;
      float noise = ((float)((seed >> 16) & 0x7fff) / 32768.0f - 0.5f) * 0.5f;
      x[i * FEATURES + f] = (f == y[i] ? 2.0f : 0.0f) + noise;
    }
  }
  OrtMemoryInfo *mem;
  check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem), "CreateCpuMemoryInfo");
  int64_t x_shape[2] = {BATCH, FEATURES}, y_shape[1] = {BATCH};
  OrtValue *xv = NULL, *yv = NULL;
  check(api->CreateTensorWithDataAsOrtValue(mem, x, sizeof x, x_shape, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &xv),
        "CreateTensor x");
  check(api->CreateTensorWithDataAsOrtValue(mem, y, sizeof y, y_shape, 1, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, &yv),
        "CreateTensor y");
  const OrtValue *inputs[2] = {xv, yv};

  check(t->SetLearningRate(sess, 0.01f), "SetLearningRate");
  float first = 0, last = 0;
  for (int s = 0; s < steps; s++) {
    OrtValue *out[8] = {0};
    check(t->TrainStep(sess, NULL, 2, inputs, n_out, out), "TrainStep");
    float *loss;
    check(api->GetTensorMutableData(out[0], (void **)&loss), "GetTensorMutableData");
    if (s == 0) first = *loss;
    last = *loss;
    if (s % 5 == 0 || s == steps - 1) printf("step %2d loss %.4f\n", s, *loss);
    for (size_t i = 0; i < n_out; i++) api->ReleaseValue(out[i]);
    check(t->OptimizerStep(sess, NULL), "OptimizerStep");
    check(t->LazyResetGrad(sess), "LazyResetGrad");
  }
  OrtValue *eval_out[8] = {0};
  size_t n_eval_out;
  check(t->TrainingSessionGetEvalModelOutputCount(sess, &n_eval_out), "EvalOutputCount");
  check(t->EvalStep(sess, NULL, 2, inputs, n_eval_out, eval_out), "EvalStep");
  float *eval_loss;
  check(api->GetTensorMutableData(eval_out[0], (void **)&eval_loss), "GetTensorMutableData eval");
  printf("eval loss %.4f\n", *eval_loss);
  for (size_t i = 0; i < n_eval_out; i++) api->ReleaseValue(eval_out[i]);

  api->ReleaseValue(xv);
  api->ReleaseValue(yv);
  api->ReleaseMemoryInfo(mem);
  t->ReleaseTrainingSession(sess);
  t->ReleaseCheckpointState(ckpt);
  api->ReleaseSessionOptions(so);
  api->ReleaseEnv(env);
  int ok = last < first * 0.5f;
  printf("%s: loss %.4f -> %.4f over %d steps\n", ok ? "PASS" : "FAIL", first, last, steps);
  return ok ? 0 : 1;
}
