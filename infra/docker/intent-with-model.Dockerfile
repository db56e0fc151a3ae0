# The deployable intent service image: the project's image (intent_service/Dockerfile, which holds no model)
# plus the model file fetched from blob storage by the pipeline, at the path INTENT_MODEL points to.
# One immutable image = code + model: a swap or a rollback moves both together, and start-up needs no network.
# The pipeline checked the file against the pinned INTENT_MODEL_SHA256 and sets the same digest on the slot, so the
# service checks it again before loading it.
#
#   docker build -f intent_service/Dockerfile -t intent-service-base .
#   docker build -f infra/docker/intent-with-model.Dockerfile --build-arg BASE_IMAGE=intent-service-base \
#       -t <registry>.azurecr.io/intent-service:<sha> <dir holding retail.skops>
ARG BASE_IMAGE=intent-service-base
FROM ${BASE_IMAGE}
COPY --chown=10001:10001 retail.skops /models/retail.skops
ENV INTENT_MODEL=/models/retail.skops
