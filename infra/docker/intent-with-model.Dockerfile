# The deployable intent service image: the project's image (intent_service/Dockerfile, which holds no model)
# plus the model file fetched from blob storage by the pipeline, at the path INTENT_MODEL points to.
# One immutable image = code + model: a swap or a rollback moves both together, and start-up needs no network.
#
#   docker build -f intent_service/Dockerfile -t intent-service-base .
#   docker build -f infra/docker/intent-with-model.Dockerfile --build-arg BASE_IMAGE=intent-service-base \
#       -t <registry>.azurecr.io/intent-service:<sha> <dir holding retail.joblib>
ARG BASE_IMAGE=intent-service-base
FROM ${BASE_IMAGE}
COPY --chown=10001:10001 retail.joblib /models/retail.joblib
ENV INTENT_MODEL=/models/retail.joblib
