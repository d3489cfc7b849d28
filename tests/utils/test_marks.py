"""utils.marks: change marks shared through a memory-mapped file."""

import os
import shutil
import tempfile
import unittest

from indico.utils.marks import FILE_SIZE, ChangeMarks


class ChangeMarksTest(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="indico-marks-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "sub", "change-marks")

    def test_a_bump_changes_the_mark_of_its_key_only(self):
        marks = ChangeMarks(self.path)
        self.addCleanup(marks.close)
        self.assertEqual(os.path.getsize(self.path), FILE_SIZE)
        self.assertNotEqual(marks._offset("profile:a"), marks._offset("profile:b"))
        before = marks.read("profile:a"), marks.read("profile:b")
        self.assertEqual(before, (0, 0))
        marks.bump("profile:a")
        first = marks.read("profile:a")
        self.assertNotEqual(first, 0)
        self.assertEqual(marks.read("profile:b"), 0)
        marks.bump("profile:a")
        self.assertNotIn(marks.read("profile:a"), (0, first))

    def test_two_maps_of_one_file_see_each_other_at_once(self):
        first, second = ChangeMarks(self.path), ChangeMarks(self.path)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        first.bump("sessions:u")
        self.assertEqual(second.read("sessions:u"), first.read("sessions:u"))
        second.bump("sessions:u")
        self.assertEqual(first.read("sessions:u"), second.read("sessions:u"))
        # Opening the file again keeps what is in it.
        third = ChangeMarks(self.path)
        self.addCleanup(third.close)
        self.assertEqual(third.read("sessions:u"), first.read("sessions:u"))

    def test_private_marks_are_shared_with_nobody(self):
        first, second = ChangeMarks(), ChangeMarks()
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        first.bump("k")
        self.assertNotEqual(first.read("k"), 0)
        self.assertEqual(second.read("k"), 0)
