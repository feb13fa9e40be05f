"""EasyEdit's ``easyeditor.models`` module paths that its example scripts import (``easyeditor.models.ike``)."""
