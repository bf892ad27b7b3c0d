import sys

from image_classifier_client.cli import main

sys.exit(main())
