"""SageMaker adapter: notebook instances and their IMDS setting."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from botocore.exceptions import ClientError

from imds_enforcer.aws import clients
from imds_enforcer.aws.errors import AwsError, translated


def iter_notebook_names() -> Iterator[str]:
    """Every notebook instance of the region (the listing has no IMDS field: each one is described)."""
    paginator = clients.sagemaker().get_paginator("list_notebook_instances")
    with translated("ListNotebookInstances"):
        for page in paginator.paginate():
            for item in page.get("NotebookInstances", []):
                yield str(item["NotebookInstanceName"])


def describe_notebook(name: str) -> Mapping[str, Any] | None:
    """The notebook, or None when SageMaker does not know it (it answers ValidationException "RecordNotFound")."""
    try:
        return clients.sagemaker().describe_notebook_instance(NotebookInstanceName=name)
    except ClientError as error:
        detail = error.response.get("Error", {})
        if detail.get("Code") == "ValidationException" and "RecordNotFound" in str(detail.get("Message", "")):
            return None
        raise AwsError.from_client_error("DescribeNotebookInstance", error) from error


def notebook_tags(arn: str) -> list[Mapping[str, Any]]:
    tags: list[Mapping[str, Any]] = []
    paginator = clients.sagemaker().get_paginator("list_tags")
    with translated("ListTags"):
        for page in paginator.paginate(ResourceArn=arn):
            tags.extend(page.get("Tags", []))
    return tags


def require_imdsv2(name: str) -> None:
    """MinimumInstanceMetadataServiceVersion 2; SageMaker refuses it unless the notebook is stopped (or failed)."""
    with translated("UpdateNotebookInstance"):
        clients.sagemaker().update_notebook_instance(
            NotebookInstanceName=name,
            InstanceMetadataServiceConfiguration={"MinimumInstanceMetadataServiceVersion": "2"},
        )
