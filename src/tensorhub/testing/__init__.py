"""The contract suite every tensorhub backend must pass, shipped with the package.

Subclass the classes below in a test module and provide the fixtures they use:

* :class:`BlobStoreContract` needs ``blob_store`` (an empty :class:`BlobStore`);
* :class:`IndexStoreContract` needs ``index_store`` (an empty :class:`IndexStore`);
* :class:`HubContract` needs ``hub`` (a :class:`TensorHub` on an empty store) and ``tmp_path``.

Example for a third-party backend::

    from tensorhub.testing import HubContract

    @pytest.fixture
    def hub():
        with TensorHub("mybackend://test", project_name="contract") as h:
            yield h

    class TestMyBackend(HubContract):
        pass

Assertions check the stores directly (``hub.index``, ``hub.blobs``) where the behaviour under
test could otherwise hide a fault, e.g. that deleting a record really removed its blobs.
"""

from tensorhub.testing.blob_contract import BlobStoreContract
from tensorhub.testing.hub_contract import HubContract
from tensorhub.testing.index_contract import IndexStoreContract

__all__ = ["BlobStoreContract", "IndexStoreContract", "HubContract"]
