"""The gRPC client starts like a client: TF Serving's messages without importing TensorFlow."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tf_descriptor(full_name: str):
    from google.protobuf import descriptor_pool
    from tensorflow.core.framework import tensor_pb2  # noqa: F401 - registers the messages
    from tensorflow.core.protobuf import meta_graph_pb2  # noqa: F401
    from tensorflow_serving.apis import (  # noqa: F401
        get_model_metadata_pb2,
        get_model_status_pb2,
        predict_pb2,
    )

    return descriptor_pool.Default().FindMessageTypeByName(full_name)


def test_light_messages_match_tensorflow_serving_field_for_field():
    from kerascls.serving import protos

    checked = 0
    for message in protos.POOL.FindFileByName(
        "kerascls/light/tensorflow_serving.proto"
    ).message_types_by_name.values():
        todo, seen = [message], set()
        while todo:
            light = todo.pop()
            if light.full_name in seen:
                continue
            seen.add(light.full_name)
            real = _tf_descriptor(light.full_name)
            for field in light.fields:
                twin = real.fields_by_name[field.name]
                assert (field.number, field.type, field.json_name, field.is_repeated) == (
                    twin.number,
                    twin.type,
                    twin.json_name,
                    twin.is_repeated,
                ), f"{light.full_name}.{field.name}"
                kind = field.message_type or field.enum_type
                twin_kind = twin.message_type or twin.enum_type
                assert (kind.full_name if kind else None) == (
                    twin_kind.full_name if twin_kind else None
                )
                if field.enum_type is not None:
                    real_values = {v.name: v.number for v in twin.enum_type.values}
                    for value in field.enum_type.values:
                        assert real_values[value.name] == value.number, value.name
                if field.message_type is not None and field.message_type.full_name.startswith(
                    "tensorflow."
                ):
                    todo.append(field.message_type)
                checked += 1
    assert checked > 30
